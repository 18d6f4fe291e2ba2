"""Credentials: who may publish, work on and control which actions.

A credential has a name, a secret key, publish, subscribe and read permissions
as action patterns (``mail:*``; ``*`` matches any run of characters, ``?`` one
character), a maximum of simultaneous WebSocket instances, and an admin right
(abort, retry, prioritize, delete, the dashboard). Publish and subscribe rights
include reading those actions; a read right alone (for monitoring) reads and
watches tasks without adding, working on or controlling any.

Keys look like ``cvk_<id>_<secret>``: the id finds the credential, the 256-bit
secret proves it. Only a salted SHA-256 of the secret is stored (a fast hash is
enough for random 256-bit secrets: there is nothing to guess), compared in
constant time, and never logged. The store is a JSON file written atomically;
the hub reloads it when it changes, so a revoked key stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import reprlib
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigurationError, ValidationError
from ..query import Filter, parse_filter

__all__ = [
    "ANONYMOUS",
    "Credential",
    "CredentialStore",
    "glob_to_regex",
    "matches_pattern",
    "read_scope",
    "read_scope_query",
]

_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:/*?\-]{1,200}$")
_KEY = re.compile(r"^cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def _check_patterns(patterns: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(patterns, str | bytes) or not isinstance(patterns, Iterable):
        # a string would be read as its characters ("mail:*" as "m", ..., "*": everything)
        raise ValidationError(f"{what} must be a list of action patterns, not "
                              f"{reprlib.repr(patterns)}")
    out = []
    for p in patterns:
        if not isinstance(p, str) or not _PATTERN.fullmatch(p):
            raise ValidationError(
                f"{what} pattern {p!r} is invalid: use action names with * and ? wildcards")
        out.append(p)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Credential:
    """One credential as stored (the key's hash, never the key)."""

    name: str
    key_id: str
    key_hash: str
    salt: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: bool = False
    max_instances: int | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    read: tuple[str, ...] = ()
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False,
                                                 compare=False)

    @property
    def revoked(self) -> bool:
        """Whether the credential was revoked."""
        return self.revoked_at is not None

    def can_publish(self, action: str) -> bool:
        """Whether this credential may add tasks of ``action``."""
        return self.admin or matches_pattern(action, self.publish)

    def can_subscribe(self, action: str) -> bool:
        """Whether this credential may work on (claim) tasks of ``action``."""
        return self.admin or matches_pattern(action, self.subscribe)

    def can_read(self, action: str) -> bool:
        """Reading a task (get, find, watch, events) needs a read, publish or
        subscribe right on its action, or admin."""
        return (self.admin or matches_pattern(action, self.read)
                or matches_pattern(action, self.publish)
                or matches_pattern(action, self.subscribe))

    @property
    def readable(self) -> tuple[str, ...]:
        """The patterns of actions this credential may read (``*`` for admins)."""
        if self.admin:
            return ("*",)
        return tuple(dict.fromkeys(self.read + self.publish + self.subscribe))

    def to_json(self) -> dict[str, Any]:
        """The credential as stored in the credentials file (the key's hash, never the key)."""
        return {"name": self.name, "key_id": self.key_id, "hash": self.key_hash,
                "salt": self.salt, "publish": list(self.publish),
                "subscribe": list(self.subscribe), "read": list(self.read),
                "admin": self.admin, "max_instances": self.max_instances,
                "created_at": self.created_at, "revoked_at": self.revoked_at}

    def public(self) -> dict[str, Any]:
        """What may be shown: everything but the hash and salt."""
        return {"name": self.name, "key_id": self.key_id, "publish": list(self.publish),
                "subscribe": list(self.subscribe), "read": list(self.read), "admin": self.admin,
                "max_instances": self.max_instances, "created_at": self.created_at,
                "revoked": self.revoked}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Credential:
        """A credential from its stored form."""
        admin = raw.get("admin", False)
        if not isinstance(admin, bool):  # "no" is not false: refused, never read as true
            raise ValueError(f"credential {raw.get('name')!r}: admin must be true or false, "
                             f"not {admin!r}")
        return cls(name=raw["name"], key_id=raw["key_id"], key_hash=raw["hash"],
                   salt=raw["salt"], publish=_check_patterns(raw.get("publish", ()), "publish"),
                   subscribe=_check_patterns(raw.get("subscribe", ()), "subscribe"),
                   read=_check_patterns(raw.get("read", ()), "read"),
                   admin=admin,
                   max_instances=raw.get("max_instances"),
                   created_at=float(raw.get("created_at", 0.0)),
                   revoked_at=raw.get("revoked_at"))


ANONYMOUS = Credential(name="anonymous", key_id="", key_hash="", salt="", publish=("*",),
                       subscribe=("*",), admin=True)
"""The credential of every request to a hub started without authentication
(``conveyor serve --insecure``, or no credential store): it may do everything."""


def glob_to_regex(pattern: str) -> str:
    """An anchored regular expression for an action pattern, valid in Python
    ``re`` and in POSIX (PostgreSQL) syntax alike."""
    out = ["^"]
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch.isalnum() or ch in "_:/-":
            out.append(ch)
        else:
            out.append("\\" + ch)
    out.append("$")
    return "".join(out)


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def matches_pattern(action: str, patterns: Sequence[str]) -> bool:
    for p in patterns:
        if p == "*" or p == action:
            return True
        rx = _REGEX_CACHE.get(p)
        if rx is None:
            rx = _REGEX_CACHE[p] = re.compile(glob_to_regex(p))
        if rx.fullmatch(action):
            return True
    return False


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class CredentialStore:
    """Credentials kept in a JSON file. Thread-safe; reloads when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._by_id: dict[str, Credential] = {}
        self._stamp: tuple[float, int] | None = None
        self.reload()

    # -- file ---------------------------------------------------------------------

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Read the file again if it changed; True if it did."""
        with self._lock:
            # looked at under the lock: a stamp taken before an add() in another thread
            # wrote the file (None, when that add made it) emptied the credentials
            stamp = self._file_stamp()
            if stamp == self._stamp and self._by_id is not None:
                return False
            if stamp is None:
                self._by_id = {}
            else:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        raw = json.load(f)
                    listed = raw.get("credentials", []) if isinstance(raw, dict) else None
                    if not isinstance(listed, list) or not all(
                            isinstance(c, dict) for c in listed):
                        raise ValueError('not {"credentials": [...]} as conveyor writes it')
                    creds = [Credential.from_json(c) for c in listed]
                except KeyError as exc:
                    raise ConfigurationError(f"cannot read credentials file {self.path!r}: "
                                             f"a credential has no {exc}") from None
                except (OSError, ValueError, TypeError) as exc:
                    raise ConfigurationError(
                        f"cannot read credentials file {self.path!r}: {exc}") from None
                self._by_id = {c.key_id: c for c in creds}
            self._stamp = stamp
            return True

    def _save(self) -> None:
        data = {"version": 1, "credentials": [c.to_json() for c in self._by_id.values()]}
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=folder)
        except OSError as exc:  # it names the temporary file: name the file it was for
            raise OSError(exc.errno, exc.strerror, self.path) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._stamp = self._file_stamp()

    # -- management ---------------------------------------------------------------

    def add(self, name: str, *, publish: Iterable[str] = (), subscribe: Iterable[str] = (),
            admin: bool = False, max_instances: int | None = None,
            read: Iterable[str] = ()) -> tuple[Credential, str]:
        """Create a credential; returns it and its key (shown once, never stored)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValidationError(
                f"credential name {name!r} is invalid: 1-100 letters, digits and _ . : @ -")
        if max_instances is not None and (isinstance(max_instances, bool)
                                          or not isinstance(max_instances, int)
                                          or max_instances < 1):
            raise ValidationError("max_instances must be an integer >= 1")
        if not isinstance(admin, bool):
            raise ValidationError(f"admin must be True or False, not {reprlib.repr(admin)}")
        pub = _check_patterns(publish, "publish")
        sub = _check_patterns(subscribe, "subscribe")
        rd = _check_patterns(read, "read")
        self.reload()
        with self._lock:
            if any(c.name == name and not c.revoked for c in self._by_id.values()):
                raise ValidationError(f"a credential named {name!r} exists already")
            key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_hex(16)
            cred = Credential(name=name, key_id=key_id, key_hash=_hash(salt, secret), salt=salt,
                              publish=pub, subscribe=sub, admin=admin,
                              max_instances=max_instances, created_at=time.time(), read=rd)
            self._by_id[key_id] = cred
            self._save()
        return cred, f"cvk_{key_id}_{secret}"

    def revoke(self, name: str) -> int:
        """Revoke every live credential with this name; returns how many."""
        self.reload()
        with self._lock:
            hits = [c for c in self._by_id.values() if c.name == name and not c.revoked]
            for c in hits:
                self._by_id[c.key_id] = replace(c, revoked_at=time.time())
            if hits:
                self._save()
        return len(hits)

    def list(self) -> list[Credential]:
        """Every credential, revoked ones included, oldest first."""
        with self._lock:
            return sorted(self._by_id.values(), key=lambda c: c.created_at)

    def get(self, name: str) -> Credential | None:
        """The live credential named ``name``, or None."""
        with self._lock:
            for c in self._by_id.values():
                if c.name == name and not c.revoked:
                    return c
        return None

    # -- checking -----------------------------------------------------------------

    def authenticate(self, key: str) -> Credential | None:
        """The live credential this key belongs to, or None. Constant-time compare."""
        match = _KEY.fullmatch(key) if isinstance(key, str) else None
        with self._lock:
            cred = self._by_id.get(match.group(1)) if match else None
        if match is None or cred is None:
            # spend the same effort as a real check
            hmac.compare_digest(_hash("00" * 16, "x"), "0" * 64)
            return None
        ok = hmac.compare_digest(_hash(cred.salt, match.group(2)), cred.key_hash)
        if not ok or cred.revoked:
            return None
        return cred

    def is_live(self, key_id: str) -> bool:
        """Whether the credential with this key id exists and is not revoked."""
        with self._lock:
            cred = self._by_id.get(key_id)
        return cred is not None and not cred.revoked


def read_scope_query(patterns: Sequence[str]) -> dict[str, Any]:
    """The filter (as JSON) of the tasks of the actions ``patterns`` (globs) name."""
    alternatives: list[dict[str, Any]] = [
        {"action": {"$regex": glob_to_regex(p)}} if any(c in p for c in "*?") else {"action": p}
        for p in patterns
    ]
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def read_scope(patterns: Sequence[str]) -> Filter:
    """The tasks of the actions ``patterns`` (globs) name."""
    return parse_filter(read_scope_query(patterns), where="read scope")
