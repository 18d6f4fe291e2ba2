"""Settings of a hub."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._hub_url import hub_url_problem
from ..errors import ConfigurationError

__all__ = ["HubConfig", "check_public_url", "is_loopback"]

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(frozen=True)
class HubConfig:
    """How a hub listens and what it allows.

    - ``host`` / ``port``: where to listen (``127.0.0.1:8765`` by default; bind
      other addresses only on purpose);
    - ``insecure``: serve without credentials (every client is an admin);
    - ``credentials_path``: the credentials file (see ``conveyor credentials``);
    - ``public_url``: the base URL clients reach the hub at, used for tasks'
      ``public_url`` (default ``http://host:port``, with this machine's host
      name when ``host`` is a wildcard such as ``0.0.0.0``);
    - ``max_frame``: largest WebSocket message accepted, in bytes (at least 512);
    - ``inline_payload``: offers to remote workers carry payloads up to this
      size inline; larger ones are fetched on demand;
    - ``max_pending``: messages queued for one slow WebSocket reader before it
      is cut off (close code 4008);
    - ``max_pending_bytes``: the same bound in characters of queued text (what a
      few large messages reach long before ``max_pending``);
    - ``max_rate``: messages per second one connection may send (a burst of
      twice that is allowed) before it is cut off (close code 4029);
    - ``login_failures`` within ``login_window`` seconds lock a client address
      out for ``login_lockout`` seconds (0 and 1 alike: the first failure);
    - ``offer_timeout``: how long an offer waits for a ``pickup`` before the
      task is offered elsewhere;
    - ``service_lease``: how long a remote worker's task lease lasts without a
      heartbeat;
    - ``abort_grace``: how long a remote worker has to answer an ``abort`` (an
      abort request or its run timeout) before the hub ends the task itself;
    - ``max_head``: largest request line and headers of an HTTP request (or
      WebSocket handshake), in bytes (larger: ``431`` and the connection closed);
    - ``head_timeout``: seconds a request's line and headers may take to arrive,
      from their first byte (from the connection's opening for the first
      request): later, ``408`` and the connection closed;
    - ``delivery``: delivery modes per action pattern (``{"cache:*": "all"}``);
      a task's ``delivery`` tag wins; the default is ``one``.

    Every field is checked when the config is made: a value of the wrong type or out
    of range is a :class:`~conveyor.errors.ConfigurationError` (a ``ValueError``).
    ``insecure`` must be a real ``bool`` (a string such as ``"false"`` read from the
    environment is refused, never taken as true), ``port`` an ``int`` from 0 to
    65535, ``host`` a non-empty string and ``login_failures`` an ``int`` >= 0.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    insecure: bool = False
    credentials_path: str | os.PathLike[str] = "conveyor-credentials.json"
    public_url: str | None = None
    max_frame: int = 1 << 20
    inline_payload: int = 64 * 1024
    max_pending: int = 10_000
    max_pending_bytes: int = 16 << 20
    max_rate: float = 1000.0
    login_failures: int = 5
    login_window: float = 60.0
    login_lockout: float = 60.0
    offer_timeout: float = 30.0
    service_lease: float = 30.0
    abort_grace: float = 5.0
    max_head: int = 64 * 1024
    head_timeout: float = 10.0
    delivery: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # a value read from the environment or a file arrives as a string: insecure="false"
        # is truthy, and served every client as an admin without a key
        if not isinstance(self.insecure, bool):
            raise ConfigurationError(f"insecure must be True or False, not {self.insecure!r}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigurationError(f"host must be a non-empty host name or address, not "
                                     f"{self.host!r}")
        if (isinstance(self.port, bool) or not isinstance(self.port, int)
                or not 0 <= self.port <= 65535):
            raise ConfigurationError(f"port must be an integer from 0 to 65535 (0: a free "
                                     f"port), not {self.port!r}")
        if isinstance(self.credentials_path, os.PathLike):  # a pathlib.Path: its text
            object.__setattr__(self, "credentials_path", os.fspath(self.credentials_path))
        if not isinstance(self.credentials_path, str) or not self.credentials_path:
            raise ConfigurationError(f"credentials_path must be a file name, not "
                                     f"{self.credentials_path!r}")
        if (isinstance(self.login_failures, bool) or not isinstance(self.login_failures, int)
                or self.login_failures < 0):
            raise ConfigurationError(f"login_failures must be an integer >= 0, not "
                                     f"{self.login_failures!r}")
        if not isinstance(self.delivery, Mapping):
            raise ConfigurationError(f"delivery must be a mapping of action patterns to "
                                     f"'one' or 'all', not {self.delivery!r}")
        for pattern, mode in self.delivery.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(f"delivery patterns must be non-empty strings, not "
                                         f"{pattern!r}")
            if mode not in ("one", "all"):
                raise ConfigurationError(f"delivery mode of {pattern!r} must be 'one' or "
                                         f"'all', not {mode!r}")
        if self.public_url is not None:
            check_public_url(self.public_url)
        for name in ("max_rate", "login_window", "login_lockout", "offer_timeout",
                     "abort_grace", "service_lease"):
            value = getattr(self, name)
            # a NaN lease was accepted, then every connection's welcome failed to encode
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("max_pending", "max_pending_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, not {value!r}")
        for name, least in (("max_frame", 512), ("inline_payload", 0)):
            value = getattr(self, name)
            # a max_frame below a hello's size refused every connection's first message
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigurationError(f"{name} must be an integer >= {least}, not {value!r}")
        if (isinstance(self.max_head, bool) or not isinstance(self.max_head, int)
                or self.max_head < 1024):
            raise ConfigurationError(f"max_head must be an integer >= 1024, not "
                                     f"{self.max_head!r}")
        if (isinstance(self.head_timeout, bool)
                or not isinstance(self.head_timeout, int | float)
                or not math.isfinite(self.head_timeout) or self.head_timeout < 0.1):
            raise ConfigurationError(f"head_timeout must be a finite number >= 0.1, not "
                                     f"{self.head_timeout!r}")
        if self.service_lease < 0.1:
            raise ConfigurationError(
                f"service_lease must be at least 0.1 seconds, not {self.service_lease!r}")

    @property
    def ws_max_size(self) -> int:
        """The WebSocket transport's frame limit: above ``max_frame``, so that the
        hub itself refuses oversized messages with close code 4009 (frames past
        this are cut by the transport with 1009)."""
        return max(4 * self.max_frame, self.max_frame + (1 << 20))

    @property
    def base_url(self) -> str:
        """``public_url`` when given, else ``http://host:port`` of the hub: a wildcard
        ``host`` (``0.0.0.0``, ``::``) gives this machine's host name, which
        other machines can at least try, and an IPv6 address is put in brackets."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in _WILDCARDS:
            host = socket.gethostname() or "localhost"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def check_public_url(url: Any) -> str:
    """``url`` when it is an http(s) URL with a host, a port from 1 to 65535 if any, and
    no query or fragment (the base of tasks' ``public_url``, checked as ``--hub`` is);
    else :class:`ConfigurationError`."""
    problem = hub_url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"public_url must be an http:// or https:// URL with a "
                                 f"host, not {url!r} ({problem})")
    assert isinstance(url, str)
    return url


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
