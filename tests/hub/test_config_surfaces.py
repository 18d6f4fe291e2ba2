"""Hub and client settings that were accepted and should have been refused (the
config audit): each is a ConfigurationError (a ValueError) when the object is made."""

from __future__ import annotations

from typing import Any

import pytest

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
