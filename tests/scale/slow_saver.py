"""A writer that dies mid-save, for the replica tests: it saves through the store library with
the same configuration a replica has (TINKERSTORE_DATABASE_URL, TINKERSTORE_BLOB_URL), which is
exactly the code a replica's save request runs, and is killed with SIGKILL by the parent.

Usage: python -m tests.scale.slow_saver DATA_DIR API_KEY RUN_ID NAME STAGE
Prints "AT <stage>" and then sleeps forever at that point of the save:

* ``files``: a multipart upload of a file in flight (parts sent, not completed);
* ``manifest``: every file and the manifest written, the catalog commit not yet made.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tinkerstore.service import open_store
from tinkerstore.store.format import Manifest, manifest_key
from tinkerstore.types.paths import CheckpointKind


def main() -> None:
    data_dir, key, run_id, name, stage = sys.argv[1:6]
    store = open_store(
        Path(data_dir),
        database_url=os.environ["TINKERSTORE_DATABASE_URL"],
        blob_url=os.environ["TINKERSTORE_BLOB_URL"],
    )
    me = store.authenticate(key)
    save = store.begin_save(me, run_id, CheckpointKind.WEIGHTS, name, overwrite=True)
    save.add_file("adapter_config.json", b'{"r": 4}')
    with save.open_file("adapter_model.safetensors") as f:
        f.write(os.urandom(6 * 1024 * 1024))  # over one part: a multipart upload is open
        if stage == "files":
            print(f"AT files {save.version.version_id}", flush=True)
            time.sleep(3600)
    if stage == "manifest":
        # What PendingSave.commit writes just before its catalog transaction.
        entries = save._entries.values()
        manifest = Manifest.build(save.tinker_path, entries, None, created_at=store.now())
        store.blobs.put(manifest_key(save.version.blob_prefix), manifest.to_bytes())
        print(f"AT manifest {save.version.version_id}", flush=True)
        time.sleep(3600)
    raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main()
