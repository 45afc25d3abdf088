"""``tinkerstore verify`` and ``tinkerstore sweep``: check a whole store, repair what is safe.

``verify`` only reads (it does not even migrate the catalog) and exits 1 when it finds a
problem, so it fits a cron job or a CI step. ``sweep`` runs exactly what the server's sweeper
runs: start-up recovery, then one sweep pass (see ``tinkerstore.service.sweeper``).
"""

from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path
from typing import IO

import click

from tinkerstore.cli.main import friendly_errors, main, store_options
from tinkerstore.errors import InvalidInput
from tinkerstore.service import Store, open_store
from tinkerstore.service.verify import verify_store

__all__ = ["sweep", "verify"]


def _open_existing(data_dir: Path, database_url: str | None, blob_url: str | None) -> Store:
    """Open a store without creating or migrating anything: a typo in --data-dir must say so
    instead of verifying a brand-new empty store as "clean"."""
    if database_url is None and not (data_dir / "catalog.db").is_file():
        raise InvalidInput(
            f"no tinkerstore catalog at {data_dir / 'catalog.db'}",
            hint="pass the --data-dir the server uses, or --database-url",
        )
    return open_store(data_dir, database_url=database_url, blob_url=blob_url, migrate=False)


def _try_lock(data_dir: Path) -> IO[str] | None:
    """The lock ``tinkerstore serve`` holds on an embedded store, if nobody holds it."""
    handle = open(data_dir / "server.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--quick",
    is_flag=True,
    help="Check file sizes only, not checksums (reads no file bytes; much faster).",
)
@store_options
@friendly_errors
def verify(
    as_json: bool, quick: bool, data_dir: Path, database_url: str | None, blob_url: str | None
) -> None:
    """Check every checkpoint's manifest and files, and records against storage.

    Changes nothing. Exit status 0 when clean, 1 when any problem is found (each one names the
    checkpoint and file). `corrupt` problems need a backup or a delete; `leftover` ones are
    repaired by `tinkerstore sweep`.
    """
    store = _open_existing(data_dir, database_url, blob_url)
    try:
        report = verify_store(store, checksums=not quick)
    finally:
        store.catalog.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for problem in report.problems:
            click.echo(str(problem))
        click.echo(
            f"checked {report.checkpoints} checkpoints, {report.files} files, "
            f"{report.bytes_read} bytes: "
            + ("clean" if report.ok else f"{len(report.problems)} problem(s)"),
            err=not report.ok,
        )
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was repaired as JSON.")
@store_options
@friendly_errors
def sweep(as_json: bool, data_dir: Path, database_url: str | None, blob_url: str | None) -> None:
    """Repair what the sweeper repairs, once: delete expired checkpoints, fail dead saves,
    remove their bytes, orphan bytes and temporary files.

    On an embedded store no server is running (the data-dir lock is free), so every pending
    save is dead and is cleaned up at once. With a server running, or on PostgreSQL, only
    saves pending longer than an hour and bytes older than the 15-minute grace period go.
    """
    store = _open_existing(data_dir, database_url, blob_url)
    embedded = database_url is None or database_url.startswith("sqlite")
    lock = _try_lock(data_dir) if embedded else None
    try:
        recovered = store.recover(sole_writer=lock is not None)
        swept = store.sweep()
    finally:
        store.catalog.close()
        if lock is not None:
            lock.close()
    errors = recovered.errors + swept.errors
    result: dict[str, object] = {
        "sole_writer": lock is not None,
        "expired": swept.expired,
        "failed_pending": recovered.failed_pending + swept.failed_pending,
        "garbage_versions": recovered.garbage_versions + swept.garbage_versions,
        "orphan_prefixes": recovered.orphan_prefixes + swept.orphan_prefixes,
        "tmp_files": recovered.tmp_files + swept.tmp_files,
        "errors": errors,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        if not result["sole_writer"]:
            click.echo("a server holds this store: pending saves younger than 1 h kept", err=True)
        for path in swept.expired:
            click.echo(f"deleted expired {path}")
        click.echo(
            f"expired {len(swept.expired)}, failed pending saves {result['failed_pending']}, "
            f"removed garbage versions {result['garbage_versions']}, "
            f"orphan prefixes {result['orphan_prefixes']}, temp files {result['tmp_files']}"
        )
        for error in errors:
            click.echo(f"error: {error}", err=True)
    sys.exit(1 if errors else 0)
