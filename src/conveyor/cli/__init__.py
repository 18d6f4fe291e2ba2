"""The ``conveyor`` command line. See ``docs/cli.md``.

``main()`` is the console script; ``python -m conveyor.cli`` runs it too.
"""

from ._main import cli, main, run

__all__ = ["cli", "main", "run"]
