"""A helper process for the disk-full test: it writes to the store so the test process never
writes into a data dir a live server holds.

Usage: python -m tests.reliability.disk_helper DATA_DIR COMMAND [ARGS]
  setup            create user 'owner' (key written to DATA_DIR/../key) and the run
  save NAME SIZE   save one checkpoint with a SIZE-byte file; prints COMMITTED or
                   STORAGE_FULL <message> (exit 0 either way), anything else is a crash
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tinkerstore.errors import StorageFull, Unavailable
from tinkerstore.service import open_store
from tinkerstore.types.paths import CheckpointKind

RUN = "rel:train:0"


def main() -> None:
    data_dir, command = Path(sys.argv[1]), sys.argv[2]
    try:
        run(data_dir, command)
    except Unavailable as exc:  # the catalog shares the full disk (see test_disk_full.py)
        print(f"UNAVAILABLE {exc}", flush=True)


def run(data_dir: Path, command: str) -> None:
    store = open_store(data_dir)
    key_file = data_dir.parent / "key"
    if command == "setup":
        _, key = store.create_api_key("owner")
        key_file.write_text(key)
        me = store.authenticate(key)
        store.create_run(me, RUN, base_model="tiny", lora_config={"rank": 4})
        print("OK", flush=True)
        return
    me = store.authenticate(key_file.read_text())
    name, size = sys.argv[3], int(sys.argv[4])
    try:
        store.save_files(
            me, RUN, CheckpointKind.WEIGHTS, name,
            {"config.json": b"{}", "model.bin": os.urandom(size)},
        )  # fmt: skip
    except StorageFull as exc:
        print(f"STORAGE_FULL {exc}", flush=True)
        return
    print("COMMITTED", flush=True)


if __name__ == "__main__":
    main()
