"""``tinkerstore serve``: run the Tinker-compatible server."""

from __future__ import annotations

import fcntl
import os
from datetime import timedelta
from pathlib import Path
from typing import IO

import click

from tinkerstore.cli.main import friendly_errors, main, open_from_options, store_options
from tinkerstore.errors import InvalidInput

__all__ = ["serve"]


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """One server per embedded store: the lock makes start-up recovery safe (no other process
    can have a save in flight) and turns a second `serve` on the same directory into a clear
    error instead of two writers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "server.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidInput(
            f"another tinkerstore server is already using {data_dir}",
            hint="stop it first, or give this one another --data-dir",
        ) from None
    return handle


def _signing_secret(secret_file: Path | None) -> bytes | None:
    """The URL-signing secret given to this replica, if any: TINKERSTORE_SIGNING_SECRET or the
    file's contents. Without one, the secret kept in the catalog is used, which every replica
    sharing the database already shares; giving one lets an operator rotate or pin it."""
    secret = os.environ.get("TINKERSTORE_SIGNING_SECRET")
    if secret_file is not None:
        secret = secret_file.read_text().strip()
    if secret is None:
        return None
    if len(secret.encode()) < 16:
        raise InvalidInput(
            "the URL-signing secret is shorter than 16 bytes",
            hint="generate one with: python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return secret.encode()


@main.command()
@click.option(
    "--host",
    envvar="TINKERSTORE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on. [env TINKERSTORE_HOST]",
)
@click.option(
    "--port",
    envvar="TINKERSTORE_PORT",
    type=int,
    default=8000,
    show_default=True,
    help="TCP port to listen on. [env TINKERSTORE_PORT]",
)
@click.option(
    "--public-url",
    envvar="TINKERSTORE_PUBLIC_URL",
    default=None,
    help="Base URL clients reach this server at, used in signed download URLs "
    "(default: taken from each request's Host). [env TINKERSTORE_PUBLIC_URL]",
)
@click.option(
    "--url-lifetime",
    envvar="TINKERSTORE_URL_LIFETIME",
    type=int,
    default=900,
    show_default=True,
    help="Seconds a signed download URL stays valid. [env TINKERSTORE_URL_LIFETIME]",
)
@click.option(
    "--long-poll-seconds",
    envvar="TINKERSTORE_LONG_POLL_SECONDS",
    type=float,
    default=25.0,
    show_default=True,
    help="How long retrieve_future holds a poll before answering try_again. "
    "[env TINKERSTORE_LONG_POLL_SECONDS]",
)
@click.option(
    "--sweep-interval",
    envvar="TINKERSTORE_SWEEP_INTERVAL",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between sweeper passes (expiry, failed saves, orphan bytes); 0 turns the "
    "background sweeper off. [env TINKERSTORE_SWEEP_INTERVAL]",
)
@click.option(
    "--pending-timeout",
    envvar="TINKERSTORE_PENDING_TIMEOUT",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="Seconds after which the sweeper turns a save (and a future) still pending into "
    "failed and removes its bytes: its writer, e.g. a replica that was killed, is taken for "
    "dead. Longer than any save can take. [env TINKERSTORE_PENDING_TIMEOUT]",
)
@click.option(
    "--sweep-grace",
    envvar="TINKERSTORE_SWEEP_GRACE",
    type=click.FloatRange(min=0),
    default=900.0,
    show_default=True,
    help="Seconds the bytes of a deleted, overwritten, expired or failed checkpoint stay before "
    "the sweeper removes them, so downloads under way finish (keep it at least "
    "--url-lifetime: presigned URLs are not revoked). [env TINKERSTORE_SWEEP_GRACE]",
)
@click.option(
    "--archive-build-wait",
    envvar="TINKERSTORE_ARCHIVE_BUILD_WAIT",
    type=click.FloatRange(min=0, max=30),
    default=2.0,
    show_default=True,
    help="On an object store, seconds an archive request (SDK 0.25) waits for the tar object "
    "it started building before answering 503 + Retry-After. "
    "[env TINKERSTORE_ARCHIVE_BUILD_WAIT]",
)
@click.option(
    "--signing-secret-file",
    envvar="TINKERSTORE_SIGNING_SECRET_FILE",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="File holding the secret that signs this server's download URLs (16+ bytes; every "
    "replica needs the same one). Default: TINKERSTORE_SIGNING_SECRET, else a secret kept in "
    "the catalog database, shared by every replica on it. [env TINKERSTORE_SIGNING_SECRET_FILE]",
)
@click.option(
    "--log-level",
    envvar="TINKERSTORE_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Server log level. [env TINKERSTORE_LOG_LEVEL]",
)
@store_options
@friendly_errors
def serve(
    host: str,
    port: int,
    public_url: str | None,
    url_lifetime: int,
    long_poll_seconds: float,
    sweep_interval: float,
    pending_timeout: float,
    sweep_grace: float,
    archive_build_wait: float,
    signing_secret_file: Path | None,
    log_level: str,
    data_dir: Path,
    database_url: str | None,
    blob_url: str | None,
) -> None:
    """Run the Tinker-compatible server (embedded default: SQLite + files under DATA_DIR).

    With --database-url postgresql://... any number of replicas can share one catalog and blob
    store (S3 or a shared directory) behind a load balancer; see docs/scale.md.
    """
    import uvicorn

    from tinkerstore.server.app import create_app
    from tinkerstore.server.settings import ServerSettings

    embedded = database_url is None or database_url.startswith("sqlite")
    secret = _signing_secret(signing_secret_file)
    lock = _lock_data_dir(data_dir) if embedded else None
    store = open_from_options(data_dir, database_url, blob_url)
    store.sweeper.pending_timeout = timedelta(seconds=pending_timeout)
    store.sweeper.grace = timedelta(seconds=sweep_grace)
    first_key = store.users.ensure_admin(store.now())
    if first_key is not None:
        click.echo(
            "First start: created user 'admin'. Its API key (shown once, keep it):\n\n"
            f"    {first_key}\n\n"
            "Use it:  export TINKER_BASE_URL=http://{host}:{port} TINKER_API_KEY=<the key>\n"
            "More keys:  tinkerstore keys create --user NAME".format(host=host, port=port),
            err=True,
        )
    settings = ServerSettings(
        public_base_url=public_url,
        url_lifetime_seconds=url_lifetime,
        long_poll_seconds=long_poll_seconds,
        sweep_interval_seconds=sweep_interval,
        sole_writer=embedded,
        signing_secret=secret,
        archive_build_wait_seconds=archive_build_wait,
    )
    app = create_app(settings, store)
    click.echo(f"tinkerstore serving on http://{host}:{port} (pid {os.getpid()})", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    del lock
