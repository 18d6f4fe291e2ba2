"""A PostgreSQL server of a test's own: ``initdb`` into a temporary folder, started,
restarted and stopped with ``pg_ctl`` (as the ``postgres`` OS user when run as
root, since PostgreSQL refuses to run as root).

Used by the tests that restart the server or make it listen on addresses of
network namespaces (tests/postgres/test_faults.py, test_multihost.py), so that
other tests running at the same time on the shared test server are not
disturbed. Trust authentication, on the listed addresses and a Unix socket
in the data folder only; everything is removed by :meth:`PgInstance.close`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


def pg_bin() -> Path:
    """The bin folder of the newest PostgreSQL installed (Debian layout), or of PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("PostgreSQL's pg_ctl/initdb are not installed (run scripts/pg-setup)")
    return Path(pg_ctl).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_gone(pid: int, timeout: float) -> bool:
    """Until process ``pid`` has ended (gone, or a zombie nobody reaped yet); whether it
    did within ``timeout`` seconds (teardown goes on either way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        time.sleep(0.05)
    return False


class PgInstance:
    """A throw-away PostgreSQL cluster. ``with PgInstance(...) as pg:`` starts it."""

    def __init__(self, listen: Sequence[str] = ("127.0.0.1",),
                 hba_networks: Sequence[str] = (), port: int | None = None) -> None:
        self.listen = list(listen)
        self.hba_networks = list(hba_networks)
        self.port = port or free_port()
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._user: str | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            entry = pwd.getpwnam("postgres")
            self._user, self._uid, self._gid = "postgres", entry.pw_uid, entry.pw_gid
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)

    # -- running commands -----------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        kwargs: dict[str, Any] = {}
        if self._uid is not None:
            kwargs.update(user=self._uid, group=self._gid, extra_groups=[])
        proc = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, cwd=self.dir, **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stdout[-1000:]} {proc.stderr[-1000:]}\n"
                               f"server log: {self.log_tail()}")
        return str(proc.stdout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- life -----------------------------------------------------------------------

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--locale=C", "--no-sync")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '{','.join(self.listen)}'\n"
                    f"port = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                    "max_connections = 200\n"
                    "shared_buffers = 64MB\n")
            with open(self.data / "pg_hba.conf", "a") as hba:
                for net in self.hba_networks:
                    hba.write(f"host all all {net} trust\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "start")

    def restart(self) -> None:
        """A fast shutdown (every session is ended) and a start, waiting until it accepts
        connections again."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-m", "fast", "restart")

    def stop(self) -> None:
        """A fast shutdown (every session is ended), leaving the files for a start."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")

    def server_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        """Stop the server (whatever state it is in) and remove its files."""
        pid = self.server_pid()
        if pid is not None:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "20", "-m", "fast", "stop",
                          timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the postmaster of our own data folder
                _wait_gone(pid, 10.0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgInstance:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs -----------------------------------------------------------------------

    def url(self, host: str = "127.0.0.1", dbname: str = "postgres", **options: str) -> str:
        query = f"?{urlencode(options)}" if options else ""
        return f"postgresql://postgres@{host}:{self.port}/{dbname}{query}"

    def admin(self) -> Any:
        """A psycopg connection (autocommit) as the superuser, over 127.0.0.1."""
        import psycopg

        return psycopg.connect(self.url(), autocommit=True, connect_timeout=10)
