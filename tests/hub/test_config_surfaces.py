"""Hub and client settings that were accepted and should have been refused (the
config audit): each is a ConfigurationError (a ValueError) when the object is made."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context
from conveyor.errors import ConfigurationError
from conveyor.hub import HubConfig


@pytest.mark.parametrize(("kwargs", "needle"), [
    # a string read from the environment or a file: "false" is truthy, and the hub
    # served every client as an admin without a key
    ({"insecure": "false"}, "insecure must be True or False, not 'false'"),
    ({"insecure": "no"}, "insecure must be True or False"),
    ({"insecure": 0}, "insecure must be True or False"),
    ({"insecure": None}, "insecure must be True or False"),
    ({"port": -1}, "port must be an integer from 0 to 65535"),
    ({"port": 65536}, "port must be an integer from 0 to 65535"),
    ({"port": "8765"}, "port must be an integer from 0 to 65535"),
    ({"port": True}, "port must be an integer from 0 to 65535"),
    ({"port": 8765.0}, "port must be an integer from 0 to 65535"),
    ({"host": None}, "host must be a non-empty host name or address"),
    ({"host": ""}, "host must be a non-empty host name or address"),
    ({"host": "  "}, "host must be a non-empty host name or address"),
    ({"login_failures": -1}, "login_failures must be an integer >= 0"),
    ({"login_failures": "5"}, "login_failures must be an integer >= 0"),
    ({"login_failures": True}, "login_failures must be an integer >= 0"),
    ({"login_failures": 5.0}, "login_failures must be an integer >= 0"),
    ({"credentials_path": None}, "credentials_path must be a file name"),
    ({"delivery": {"x:*": "many"}}, "delivery mode of 'x:*' must be 'one' or 'all'"),
    ({"delivery": {"": "one"}}, "delivery patterns must be non-empty strings"),
    ({"delivery": [("x:*", "all")]}, "delivery must be a mapping"),
])
def test_hub_config_refuses(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        HubConfig(**kwargs)
    assert needle in str(caught.value)
    assert isinstance(caught.value, ValueError)  # as the other checks (and as before)


@pytest.mark.parametrize("kwargs", [
    {"insecure": True}, {"insecure": False}, {"port": 0}, {"port": 65535},
    {"host": "::"}, {"host": "0.0.0.0"}, {"login_failures": 0},
    {"delivery": {"cache:*": "all", "mail:*": "one"}},
])
def test_hub_config_still_takes(kwargs: dict[str, Any]) -> None:
    config = HubConfig(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


def test_hub_config_takes_a_path_as_credentials_path(tmp_path: Path) -> None:
    """A pathlib.Path worked before the type checks, as CredentialStore takes one."""
    config = HubConfig(credentials_path=tmp_path / "creds.json")
    assert config.credentials_path == str(tmp_path / "creds.json")


@pytest.mark.parametrize("url", ["http://hub.example:99999", "http://hub.example:0",
                                 "http://hub.example/base?x=1", "http://hub.example/#frag",
                                 "ftp://hub.example", "http://"])
def test_public_url_is_checked_as_hub_urls_are(url: str) -> None:
    with pytest.raises(ConfigurationError, match="public_url must be an http:// or https:// "
                                                 "URL with a host"):
        HubConfig(public_url=url)


def test_public_url_with_a_port_and_a_path_still_works() -> None:
    config = HubConfig(public_url="https://hub.example:8443/conveyor/")
    assert config.base_url == "https://hub.example:8443/conveyor"


# -- the clients' settings ------------------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    ("127.0.0.1:8765", "it has no scheme"),  # was "cannot reach the hub" at the first call
    ("ftp://h", "its scheme is 'ftp'"),
    ("http://h:99999", "its port must be a number from 1 to 65535"),
    ("http://", "it has no host"),
    ("http://h/?x=1", "it must not have a query"),
])
async def test_http_client_checks_its_url_when_made(url: str, problem: str) -> None:
    from conveyor.client import HTTPClient

    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        HTTPClient(url)


@pytest.mark.parametrize(("timeout", "needle"), [
    (float("nan"), "timeout must be a finite number of seconds, not nan"),
    (float("inf"), "timeout must be a finite number of seconds"),
    (-1, "timeout must be > 0 seconds, not -1"),
    (0, "timeout must be > 0 seconds, not 0"),
    ("30", "timeout must be a number of seconds"),
])
async def test_client_timeouts_are_checked_when_made(timeout: Any, needle: str) -> None:
    from conveyor.client import HTTPClient, HubClient

    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        HTTPClient("http://127.0.0.1:1", timeout=timeout)
    with pytest.raises(ConfigurationError, match=re.escape(f"open_{needle}")):
        HubClient("http://127.0.0.1:1", open_timeout=timeout)


def test_hub_client_url_of_another_scheme_is_a_configuration_error() -> None:
    from conveyor.client import HubClient

    with pytest.raises(ConfigurationError, match="not a hub URL"):
        HubClient("127.0.0.1:8765")


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.1:0", "its port must be a number from 1 to 65535"),
    ("http://127.0.0.1:99999", "its port must be a number from 1 to 65535"),
    ("http://", "it has no host"),
])
def test_hub_client_checks_its_url_as_http_client_does(url: str, problem: str) -> None:
    """HubClient took these and failed at the first connect (port 80 named, a bare
    ValueError, "hostname isn't provided"); HTTPClient and --hub refused them."""
    from conveyor.client import HubClient

    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        HubClient(url)
    # a WebSocket URL keeps its query (a token a proxy reads, say)
    assert HubClient("http://h.example/x?token=1").url == "ws://h.example/x/ws?token=1"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"max_backoff": 0}, "max_backoff must be > 0 seconds, not 0"),
    ({"max_backoff": -1}, "max_backoff must be > 0 seconds, not -1"),
    ({"max_backoff": float("nan")}, "max_backoff must be a finite number of seconds"),
    ({"stop_timeout": float("nan")}, "stop_timeout must be a finite number of seconds"),
    ({"stop_timeout": -1}, "stop_timeout must be >= 0 seconds, not -1"),
])
async def test_work_checks_its_timings_before_connecting(
        kwargs: dict[str, Any], needle: str, caplog: pytest.LogCaptureFixture) -> None:
    """max_backoff=0 against a hub that was down: thousands of reconnects (and warning
    lines) a second. Refused before the first attempt."""
    from conveyor.client import HubClient

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HubClient(f"http://127.0.0.1:{port}", open_timeout=1)

    @client.handler("w:x")
    async def x(ctx: Context) -> None:
        return None

    try:
        with pytest.raises(ConfigurationError, match=re.escape(needle)):
            await asyncio.wait_for(client.work("svc", **kwargs), 10)
    finally:
        await client.close()
    assert client.connects == 0
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
