"""Storage URLs in messages: with the password hidden."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

__all__ = ["MAX_OPTION_SECONDS", "given_twice", "hide_password", "misplaced_userinfo",
           "scrub_password"]

MAX_OPTION_SECONDS = 3600.0
"""The most a storage's ``busy_timeout`` and ``poll_interval`` (SQLite) or
``poll_interval`` (PostgreSQL) may be: an hour (well within what
``threading`` can wait, ``threading.TIMEOUT_MAX``)."""

_PASSWORD_PARAM = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def misplaced_userinfo(parts: SplitResult) -> bool:
    """Whether an ``@`` that ends a user name or password was left out of the URL's
    host part: a ``/``, ``?`` or ``#`` written unencoded before it (``user:pa/ss@db``)
    made the parser end the host part early, so the password would be read as the
    host, path or query (and shown in messages)."""
    if "@" in parts.netloc:
        return False
    keys = [item.partition("=")[0] for item in parts.query.split("&")]
    return "@" in parts.path or "@" in parts.fragment or any("@" in k for k in keys)


def given_twice(keys: Sequence[str]) -> str | None:
    """The first (in sorted order) of the URL options ``keys`` that is given more than
    once, if any: a URL's option is given once (last-wins hid the other value)."""
    twice = sorted({k for k in keys if keys.count(k) > 1})
    return twice[0] if twice else None


def hide_password(url: str) -> str:
    """``url`` for messages: the password (``user:pw@`` or ``?password=``) as ``***``."""
    try:
        parts = urlsplit(url)
        if misplaced_userinfo(parts):
            # everything up to the last "@" is the user and password: keep the user
            userinfo, _, rest = url.partition("//")[2].rpartition("@")
            user, colon, _ = userinfo.partition(":")
            return f"{parts.scheme}://{user}{':***' if colon else ''}@{rest}"
        query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
        if parts.password is None and query == parts.query:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"  # the user as written
        url = f"{parts.scheme}://{netloc}{parts.path}"
        return f"{url}?{query}" if query else url
    except ValueError:  # not a URL Python can take apart (http://[::1)
        if "@" not in url and "password" not in url.lower():
            return url  # nothing in it to hide
        return f"{url.partition(':')[0]}://..."


def scrub_password(text: str, url: str) -> str:
    """``text`` (a message that may quote parts of ``url``) with the URL's passwords,
    as written in it, replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    secrets = [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(parts.query)]
    if parts.password:
        secrets.append(parts.password)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
