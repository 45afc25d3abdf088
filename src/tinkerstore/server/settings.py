"""The one validated settings object of the HTTP server, passed into ``create_app``.

No globals: every knob the server reads lives here, with its default and why.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Signed download URLs: the SDK defaults to 15 min when it cannot parse an expiry, and the
    # 0.38 tools re-sign once less than 5 min remain, so anything well above 5 min works.
    url_lifetime_seconds: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    # retrieve_future holds a poll this long before answering try_again: below the SDK's 45 s
    # poll timeout, long enough that an idle client does not spin.
    long_poll_seconds: float = Field(default=25.0, gt=0, le=40)
    # How often a waiting poll re-reads the catalog, so a future finished by another replica is
    # seen even though no in-process notification arrives.
    future_recheck_seconds: float = Field(default=1.0, gt=0, le=30)
    # How long a model's queue waits for a missing seq_id before failing the requests behind it.
    future_gap_timeout_seconds: float = Field(default=120.0, gt=0)
    # Request bodies above this are refused with 413 (forward_backward chunks are ~5 MB).
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Where signed URLs point, e.g. "https://tinker.example.org/prefix". None: derived from the
    # request (Host header and scheme), which is right for direct and loopback deployments.
    public_base_url: str | None = None
    # Overrides the store's shared secret (all replicas must then be given the same one).
    signing_secret: bytes | None = None
    # The sweeper's period; 0 disables the background sweeper (tests drive it by hand).
    sweep_interval_seconds: float = Field(default=60.0, ge=0)
    # True when this process is the only one writing the store (the embedded default, guarded by
    # a lock file): start-up repair may then fail every pending save and future at once. Replicas
    # sharing PostgreSQL + S3 set it False and leave stale work to the timed sweeper.
    sole_writer: bool = True
    # On an object store (S3) the 0.25 archive is a tar object built once per version in the
    # background (server/archives.py). A request waits this long for a build it started before
    # answering 503, so small checkpoints get their URL at once; the 503 carries Retry-After.
    archive_build_wait_seconds: float = Field(default=2.0, ge=0, le=30)
    archive_retry_after_seconds: int = Field(default=5, ge=1, le=60)
    # Models listed by get_server_capabilities.
    supported_models: tuple[str, ...] = ()

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_base_url must start with http:// or https://")
        return value.rstrip("/")
