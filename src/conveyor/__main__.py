"""``python -m conveyor``: the ``conveyor`` command line (as ``python -m conveyor.cli``)."""

from .cli import main

main(prog_name="conveyor")
