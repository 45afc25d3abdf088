"""The one error tree of tinkerstore.

Every error knows its HTTP status, a stable machine-readable ``code`` and the failed-future
``category`` the Tinker SDK understands. The server maps this tree to HTTP in exactly one place
(``tinkerstore.server.errors``); nothing else chooses a status.

    TinkerstoreError                      500 internal          (server)
    ├── InvalidInput                      400 invalid_input     (user)
    │   ├── InvalidPath                   400 invalid_path
    │   ├── InvalidTTL                    400 invalid_ttl
    │   ├── InvalidTensor                 400 invalid_tensor
    │   ├── InvalidManifest               400 invalid_manifest
    │   ├── AlreadyExists                 400 already_exists    (never 409: the SDK retries 409)
    │   └── IncompatibleCheckpoint        400 incompatible_checkpoint
    ├── Unauthenticated                   401 unauthenticated   (user)
    ├── Forbidden                         403 forbidden         (user)
    │   ├── SignatureInvalid              403 signature_invalid
    │   └── UrlExpired                    403 url_expired
    ├── NotFound                          404 not_found         (user)
    │   ├── CheckpointNotFound            404 checkpoint_not_found
    │   ├── RunNotFound                   404 run_not_found
    │   ├── SessionNotFound               404 session_not_found
    │   ├── FutureNotFound                404 future_not_found
    │   ├── ModelNotFound                 404 model_not_found
    │   └── ApiKeyNotFound                404 api_key_not_found
    ├── SessionGone                       410 session_finished  (user)
    ├── PayloadTooLarge                   413 payload_too_large (user)
    ├── RangeNotSatisfiable               416 range_not_satisfiable (user)
    ├── CheckpointCorrupted               500 checkpoint_corrupted (server)
    ├── StorageFull                       507 storage_full      (server)
    └── Unavailable                       503 unavailable       (server)

Messages say what was wrong and what to do about it; ``hint`` carries the "what to do" part
separately so the CLI and JSON bodies can show it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Category = Literal["user", "server", "unknown"]

__all__ = [
    "AlreadyExists",
    "ApiKeyNotFound",
    "Category",
    "CheckpointCorrupted",
    "CheckpointNotFound",
    "Forbidden",
    "FutureNotFound",
    "IncompatibleCheckpoint",
    "InvalidInput",
    "InvalidManifest",
    "InvalidPath",
    "InvalidTTL",
    "InvalidTensor",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RangeNotSatisfiable",
    "RunNotFound",
    "SessionGone",
    "SessionNotFound",
    "SignatureInvalid",
    "StorageFull",
    "TinkerstoreError",
    "Unauthenticated",
    "Unavailable",
    "UrlExpired",
]


class TinkerstoreError(Exception):
    """Base of every error tinkerstore raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    category: ClassVar[Category] = "server"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str]:
        """The JSON error body, one shape for every error (a test locks it)."""
        body = {"detail": str(self), "code": self.code}
        return body


class InvalidInput(TinkerstoreError):
    status = 400
    code = "invalid_input"
    category = "user"


class InvalidPath(InvalidInput):
    code = "invalid_path"


class InvalidTTL(InvalidInput):
    code = "invalid_ttl"


class InvalidTensor(InvalidInput):
    code = "invalid_tensor"


class InvalidManifest(InvalidInput):
    code = "invalid_manifest"


class AlreadyExists(InvalidInput):
    code = "already_exists"


class IncompatibleCheckpoint(InvalidInput):
    code = "incompatible_checkpoint"


class Unauthenticated(TinkerstoreError):
    status = 401
    code = "unauthenticated"
    category = "user"


class Forbidden(TinkerstoreError):
    status = 403
    code = "forbidden"
    category = "user"


class SignatureInvalid(Forbidden):
    code = "signature_invalid"


class UrlExpired(Forbidden):
    code = "url_expired"


class NotFound(TinkerstoreError):
    status = 404
    code = "not_found"
    category = "user"


class CheckpointNotFound(NotFound):
    code = "checkpoint_not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class FutureNotFound(NotFound):
    code = "future_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class SessionGone(TinkerstoreError):
    """A finished session: the SDK (0.38) stops its heartbeat on 410."""

    status = 410
    code = "session_finished"
    category = "user"


class PayloadTooLarge(TinkerstoreError):
    status = 413
    code = "payload_too_large"
    category = "user"


class RangeNotSatisfiable(TinkerstoreError):
    status = 416
    code = "range_not_satisfiable"
    category = "user"


class CheckpointCorrupted(TinkerstoreError):
    status = 500
    code = "checkpoint_corrupted"
    category = "server"


class StorageFull(TinkerstoreError):
    status = 507
    code = "storage_full"
    category = "server"


class Unavailable(TinkerstoreError):
    status = 503
    code = "unavailable"
    category = "server"

    def __init__(self, message: str, *, hint: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
