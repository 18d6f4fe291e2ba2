"""The credentials store under a hub's reloading thread."""

from __future__ import annotations

import threading
from pathlib import Path

from conveyor.hub._credentials import CredentialStore


def test_an_add_racing_the_reload_thread_keeps_its_credential(tmp_path: Path) -> None:
    """The hub reloads the file every second in a thread. A reload that looked at the
    file before an add() wrote it (there was none yet), then waited for the lock,
    emptied the credentials: a key just made was refused (401) until the next reload."""
    lost = 0
    for i in range(30):
        store = CredentialStore(tmp_path / f"c{i}.json")
        stop = threading.Event()

        def reloading(store: CredentialStore = store, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                store.reload()

        thread = threading.Thread(target=reloading)
        thread.start()
        try:
            _, key = store.add("ops", admin=True)
        finally:
            stop.set()
            thread.join()
        lost += store.authenticate(key) is None
    assert lost == 0
