"""Storage URLs in messages: with the password hidden."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["hide_password"]

_PASSWORD_PARAM = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def hide_password(url: str) -> str:
    """``url`` for messages: the password (``user:pw@`` or ``?password=``) as ``***``."""
    try:
        parts = urlsplit(url)
        query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
        if parts.password is None and query == parts.query:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"  # the user as written
        url = f"{parts.scheme}://{netloc}{parts.path}"
        return f"{url}?{query}" if query else url
    except ValueError:
        return f"{url.partition(':')[0]}://..."
