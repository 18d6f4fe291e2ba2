"""A child process of test_dedupe_race.

Usage: python -m tests.control._dedupe_child URL GO_FILE OUT_FILE SEED N

Opens its own app on URL, prints "ready", waits for GO_FILE to exist, then
adds the N unique keys ``key-0`` .. ``key-<N-1>`` in its own shuffled order,
in batches of 25 (``add_many_checked``), and writes the id it got for each key,
and whether it was told the task is new, to OUT_FILE as JSON.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from conveyor import SyncConveyor


def main(url: str, go: str, out: str, seed: int, n: int) -> None:
    app = SyncConveyor(url)
    try:
        app.open()
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise SystemExit("no go file")
            time.sleep(0.001)
        keys = list(range(n))
        random.Random(seed).shuffle(keys)
        got: dict[str, tuple[str, bool]] = {}
        for start in range(0, n, 25):
            batch = keys[start:start + 25]
            added = app.add_many_checked([("dedupe", {"k": k, "by": seed},
                                           {"unique_key": f"key-{k}"}) for k in batch])
            got.update({f"key-{k}": (t.id, created)
                        for k, (t, created) in zip(batch, added, strict=True)})
    finally:
        app.close()
    with open(out, "w") as f:
        json.dump(got, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
