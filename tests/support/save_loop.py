"""A process that saves checkpoints forever, for the crash tests (killed with SIGKILL).

Usage: python -m tests.support.save_loop DATA_DIR SEED
Prints "READY" once, then "COMMITTED <tinker_path>" after each commit returns (flushed), so the
parent knows exactly which checkpoints were acknowledged before the kill.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from tinkerstore.errors import RunNotFound
from tinkerstore.service import open_store
from tinkerstore.types.paths import CheckpointKind


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    store = open_store(data_dir)
    store.recover(sole_writer=True)
    key_file = data_dir / "key"
    if not key_file.exists():
        _, key = store.create_api_key("crash", label="crash test")
        tmp = key_file.with_suffix(".tmp")
        tmp.write_text(key)
        tmp.rename(key_file)  # atomic: a kill never leaves a torn key file
    key = key_file.read_text()
    me = store.authenticate(key)
    run = "crash:train:0"
    try:
        store.get_run(me, run)
    except RunNotFound:
        store.create_run(me, run, base_model="tiny-qwen3", lora_config={"rank": 4})
    print("READY", flush=True)
    i = 0
    while True:
        i += 1
        name = f"s{os.getpid()}-{i}"
        kind = rng.choice([CheckpointKind.WEIGHTS, CheckpointKind.SAMPLER_WEIGHTS])
        overwrite = rng.random() < 0.3
        if overwrite:
            name = "rolling"
        with store.begin_save(me, run, kind, name, overwrite=overwrite) as save:
            for j in range(rng.randint(1, 3)):
                size = rng.randint(1, 512 * 1024)
                save.add_file(f"part{j}.bin", rng.randbytes(size))
            record = save.commit()
        print(f"COMMITTED tinker://{run}/{kind.value}/{name} {record.manifest_digest}", flush=True)


if __name__ == "__main__":
    main()
