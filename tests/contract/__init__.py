"""The storage contract suite, run on every backend.

The suite itself ships with the package as :mod:`conveyor.testing.contract`
so that authors of new backends can import it; the modules here run it on
the memory, SQLite and PostgreSQL backends.
"""

from conveyor.testing.contract import StorageContract, make_spec

__all__ = ["StorageContract", "make_spec"]
