"""The clients' own settings (timeouts, backoff), checked when they are given."""

from __future__ import annotations

from datetime import timedelta

from .._hub_url import hub_url_problem
from ..errors import ConfigurationError, ValidationError
from ..model import seconds
from ..storage._url import hide_password

__all__ = ["check_http_url", "check_hub_url", "setting_seconds"]


def setting_seconds(value: float | timedelta, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as seconds when it is a finite number (or timedelta) > 0 (>= 0 with
    ``allow_zero``) and at most 100 years, as every duration of the library; else
    :class:`ConfigurationError` (a ``ValueError``). NaN, infinity and values <= 0
    were taken: a reconnect loop without a pause, a raw error at the first call."""
    try:
        result = seconds(value, what, allow_none=False, allow_zero=allow_zero)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None
    assert result is not None
    return result


def check_http_url(url: str) -> str:
    """``url`` when it is the hub's base ``http://`` or ``https://`` URL, as ``--hub``
    is checked; else :class:`ConfigurationError`."""
    return check_hub_url(url, ("http", "https"), "the hub's http:// or https:// URL with "
                                                 "a host")


def check_hub_url(url: str, schemes: tuple[str, ...], expected: str, *,
                  query: bool = False) -> str:
    """``url`` when :func:`~conveyor._hub_url.hub_url_problem` finds nothing wrong with
    it (one of ``schemes``; a query only with ``query``); else
    :class:`ConfigurationError` naming the problem and what was ``expected``."""
    problem = hub_url_problem(url, schemes, query=query)
    if problem is not None:
        shown = hide_password(url) if isinstance(url, str) else url
        raise ConfigurationError(f"not a hub URL: {shown!r} ({problem}; expected {expected})")
    return url
