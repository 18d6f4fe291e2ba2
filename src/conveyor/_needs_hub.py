"""Imported first by ``conveyor.hub`` and ``conveyor.client``: without the ``[hub]``
extra, their import fails with a ``ModuleNotFoundError`` that names the extra to
install, rather than the first of its modules that an import statement missed."""

from ._extras import HUB_MODULES, require_extra

require_extra("hub", HUB_MODULES, "conveyor.hub and conveyor.client")
