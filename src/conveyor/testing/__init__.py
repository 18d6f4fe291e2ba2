"""Helpers for testing code that uses conveyor, and for testing new backends.

- :class:`StorageContract`: the storage contract suite (needs pytest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["StorageContract", "make_spec"]

if TYPE_CHECKING:
    from .contract import StorageContract, make_spec


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import contract

        return getattr(contract, name)
    raise AttributeError(name)
