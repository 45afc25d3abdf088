"""The ``tinkerstore`` command: serve, keys, and store maintenance.

Every option has ``help=`` and the store options read environment variables, so scripts and
replicas configure all commands the same way.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tinkerstore import __version__
from tinkerstore.errors import TinkerstoreError

__all__ = ["friendly_errors", "main", "open_from_options", "store_options"]

F = TypeVar("F", bound=Callable[..., Any])


def _use_s3_endpoint(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # The blob store reads its endpoint from AWS_ENDPOINT_URL (as boto3 itself does), so the
    # flag lands there: every command, whichever way it opens the store, then uses it.
    if value:
        os.environ["AWS_ENDPOINT_URL"] = value


def store_options(func: F) -> F:
    """The options every store-touching command shares (same flags, same variables)."""
    func = click.option(
        "--s3-endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        default=None,
        expose_value=False,
        callback=_use_s3_endpoint,
        help="Endpoint of an S3-compatible object store for s3:// blob URLs, e.g. "
        "http://seaweedfs:8333 (default: AWS itself). Credentials come from the usual AWS "
        "variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) or files. "
        "[env AWS_ENDPOINT_URL]",
    )(func)
    func = click.option(
        "--blob-url",
        envvar="TINKERSTORE_BLOB_URL",
        default=None,
        help="Where checkpoint bytes live: file:///abs/dir or s3://bucket/prefix "
        "(see --s3-endpoint-url). Default: DATA_DIR/blobs. [env TINKERSTORE_BLOB_URL]",
    )(func)
    func = click.option(
        "--database-url",
        envvar="TINKERSTORE_DATABASE_URL",
        default=None,
        help="Catalog database: sqlite:///path.db or postgresql://user@host:port/db. "
        "Default: DATA_DIR/catalog.db. [env TINKERSTORE_DATABASE_URL]",
    )(func)
    func = click.option(
        "--data-dir",
        envvar="TINKERSTORE_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("tinkerstore-data"),
        show_default=True,
        help="Directory of the embedded store (SQLite catalog, blobs, lock); created on first "
        "use. [env TINKERSTORE_DATA_DIR]",
    )(func)
    return func


def open_from_options(data_dir: Path, database_url: str | None, blob_url: str | None) -> Any:
    from tinkerstore.service import open_store

    return open_store(data_dir, database_url=database_url, blob_url=blob_url)


def friendly_errors(func: F) -> F:
    """Print our errors as one clear line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TinkerstoreError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinkerstore")
def main() -> None:
    """tinkerstore: a self-hostable, Tinker-compatible weights & checkpoints service."""


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (tml-...)."""


@keys.command("create")
@click.option(
    "--user", "user_name", required=True, help="User the key belongs to (created if new)."
)
@click.option("--label", default="", help="A note to recognise the key by in `keys list`.")
@store_options
@friendly_errors
def keys_create(
    user_name: str, label: str, data_dir: Path, database_url: str | None, blob_url: str | None
) -> None:
    """Print exactly one new tml-... key on stdout."""
    store = open_from_options(data_dir, database_url, blob_url)
    record, key = store.create_api_key(user_name, label)
    click.echo(f"created key {record.key_id} for user {user_name!r}", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--user", "user_name", default=None, help="Only this user's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@store_options
@friendly_errors
def keys_list(
    user_name: str | None,
    as_json: bool,
    data_dir: Path,
    database_url: str | None,
    blob_url: str | None,
) -> None:
    """List keys (ids, users, labels, state); never the keys themselves."""
    store = open_from_options(data_dir, database_url, blob_url)
    rows = []
    for rec in store.users.list_api_keys(user_name):
        user = store.catalog.get_user(rec.user_id)
        rows.append(
            {
                "key_id": rec.key_id,
                "user": user.name if user else rec.user_id,
                "label": rec.label,
                "created_at": rec.created_at.isoformat(),
                "revoked_at": rec.revoked_at.isoformat() if rec.revoked_at else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key id", "user", "label", "created", "state")
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        table.add_row(
            str(row["key_id"]), str(row["user"]), str(row["label"]), str(row["created_at"]), state
        )
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id", type=int)
@store_options
@friendly_errors
def keys_revoke(
    key_id: int, data_dir: Path, database_url: str | None, blob_url: str | None
) -> None:
    """Revoke the key KEY_ID (see `keys list`); requests with it then get 401."""
    store = open_from_options(data_dir, database_url, blob_url)
    store.users.revoke_api_key(key_id, store.now())
    click.echo(f"revoked key {key_id}")
