"""One sweeper process for the racing-sweepers test.

Usage: python -m tests.reliability.sweep_once DATABASE_URL BLOB_URL START_AT
Waits until the wall clock reaches START_AT (so two processes start together), runs one sweep
and prints its report as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from tinkerstore.service import open_store


def main() -> None:
    db, blobs, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = open_store(None, database_url=db, blob_url=blobs)
    time.sleep(max(0.0, start_at - time.time()))
    report = store.sweep()
    print(json.dumps({"expired": report.expired, "errors": report.errors}), flush=True)
    store.catalog.close()


if __name__ == "__main__":
    main()
