"""What a part of conveyor that lives in an extra says when the extra is missing."""

from __future__ import annotations

import importlib.util

__all__ = ["HUB_MODULES", "require_extra"]

HUB_MODULES = ("starlette", "uvicorn", "websockets", "prometheus_client", "httpx", "orjson")
"""The top-level modules of the ``[hub]`` extra."""


def require_extra(extra: str, modules: tuple[str, ...], what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra to install when one of
    ``modules`` is missing (its ``name`` is the module's, as Python's own)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses it, a broken entry
            found = False
        if not found:
            raise ModuleNotFoundError(
                f"{what} needs the [{extra}] extra (no module {module!r}): "
                f"pip install 'conveyor[{extra}]'", name=module)
