"""The hub starts, answers health checks, and refuses what it must."""

from __future__ import annotations

import httpx

from .conftest import RunningHub


async def test_health_needs_a_credential(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.get("/healthz")).status_code == 401
        key = hub.key("ops", admin=True)
        ok = await http.get("/healthz", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        ready = await http.get("/readyz", headers={"Authorization": f"Bearer {key}"})
        assert ready.status_code == 200


async def test_insecure_hub_is_open(insecure_hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=insecure_hub.url) as http:
        assert (await http.get("/healthz")).status_code == 200


def test_base_url_of_wildcard_and_ipv6_hosts() -> None:
    """Tasks' public_url must be reachable from elsewhere: never ``0.0.0.0``."""
    import socket

    from conveyor.hub import HubConfig

    assert HubConfig(port=9000).base_url == "http://127.0.0.1:9000"
    name = socket.gethostname()
    assert HubConfig(host="0.0.0.0", port=9000).base_url == f"http://{name}:9000"
    assert HubConfig(host="::", port=9000).base_url == f"http://{name}:9000"
    assert HubConfig(host="::1", port=9000).base_url == "http://[::1]:9000"
    given = HubConfig(host="0.0.0.0", public_url="https://hub.example/")
    assert given.base_url == "https://hub.example"
