"""The ``tinker://<run_id>/<kind>/<name>`` grammar.

The SDK splits on ``/`` and accepts anything in the three parts; we are stricter because run ids
and names end up in URLs, database keys and log lines. A segment that parses can never name a
location outside its own checkpoint: no separators, no dot segments, no control characters.
"""

from __future__ import annotations

import enum
import unicodedata

from pydantic import BaseModel, ConfigDict

from tinkerstore.errors import InvalidPath

__all__ = [
    "MAX_SEGMENT_LENGTH",
    "SCHEME",
    "CheckpointKind",
    "ParsedCheckpointTinkerPath",
    "format_tinker_path",
    "parse_tinker_path",
    "validate_segment",
]

SCHEME = "tinker://"
# Long enough for "<uuid>:train:<n>" and for user-chosen names, short enough for any filesystem.
MAX_SEGMENT_LENGTH = 200


class CheckpointKind(enum.StrEnum):
    """The path segment of a checkpoint; ``checkpoint_type`` is its wire twin."""

    WEIGHTS = "weights"
    SAMPLER_WEIGHTS = "sampler_weights"
    EXTERNAL_WEIGHTS = "external_weights"

    @property
    def checkpoint_type(self) -> str:
        return _KIND_TO_TYPE[self]

    @classmethod
    def from_checkpoint_type(cls, checkpoint_type: str) -> CheckpointKind:
        for kind, ctype in _KIND_TO_TYPE.items():
            if ctype == checkpoint_type:
                return kind
        raise InvalidPath(
            f"unknown checkpoint type {checkpoint_type!r}",
            hint="use one of: training, sampler, external",
        )

    @classmethod
    def parse(cls, text: str) -> CheckpointKind:
        try:
            return cls(text)
        except ValueError:
            raise InvalidPath(
                f"unknown checkpoint kind {text!r}",
                hint="the kind segment must be weights, sampler_weights or external_weights",
            ) from None


_KIND_TO_TYPE = {
    CheckpointKind.WEIGHTS: "training",
    CheckpointKind.SAMPLER_WEIGHTS: "sampler",
    CheckpointKind.EXTERNAL_WEIGHTS: "external",
}


def validate_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a safe single path segment, else raise ``InvalidPath``.

    ``what`` names the part in the message ("run id", "checkpoint name", ...).
    """
    if not isinstance(value, str):
        raise InvalidPath(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise InvalidPath(f"{what} is empty", hint=f"give a non-empty {what}")
    if len(value) > MAX_SEGMENT_LENGTH:
        raise InvalidPath(
            f"{what} is {len(value)} characters long",
            hint=f"use at most {MAX_SEGMENT_LENGTH} characters",
        )
    if value in (".", ".."):
        raise InvalidPath(f"{what} {value!r} is a dot segment", hint="choose another name")
    for ch in value:
        if ch in "/\\":
            raise InvalidPath(
                f"{what} {value!r} contains {ch!r}", hint=f"a {what} cannot contain / or \\"
            )
        if ch in "?#%":
            # The SDK puts ids into URLs unencoded: a name with these could be saved but never
            # deleted, published or re-TTL'd.
            raise InvalidPath(
                f"{what} {value!r} contains {ch!r}",
                hint=f"the SDK puts a {what} into URLs unencoded; avoid ? # %",
            )
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidPath(
                f"{what} {value!r} contains the control character U+{ord(ch):04X}",
                hint="remove control and formatting characters",
            )
    return value


class ParsedCheckpointTinkerPath(BaseModel):
    """A parsed ``tinker://`` checkpoint path, field for field as the SDK's model."""

    model_config = ConfigDict(frozen=True)

    tinker_path: str
    training_run_id: str
    checkpoint_type: str
    checkpoint_id: str

    @property
    def kind(self) -> CheckpointKind:
        return CheckpointKind.from_checkpoint_type(self.checkpoint_type)

    @property
    def name(self) -> str:
        return self.checkpoint_id.split("/", 1)[1]

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        return parse_tinker_path(tinker_path)

    @classmethod
    def from_parts(
        cls, run_id: str, kind: CheckpointKind | str, name: str
    ) -> ParsedCheckpointTinkerPath:
        kind = kind if isinstance(kind, CheckpointKind) else CheckpointKind.parse(kind)
        validate_segment(run_id, "run id")
        validate_segment(name, "checkpoint name")
        return cls(
            tinker_path=f"{SCHEME}{run_id}/{kind.value}/{name}",
            training_run_id=run_id,
            checkpoint_type=kind.checkpoint_type,
            checkpoint_id=f"{kind.value}/{name}",
        )


def parse_tinker_path(tinker_path: str) -> ParsedCheckpointTinkerPath:
    """Parse ``tinker://<run_id>/<kind>/<name>``; every rejection names the offending part."""
    if not isinstance(tinker_path, str):
        raise InvalidPath(f"a tinker path must be a string, got {type(tinker_path).__name__}")
    if not tinker_path.startswith(SCHEME):
        scheme = tinker_path.split("://", 1)[0] + "://" if "://" in tinker_path else None
        what = f"scheme {scheme!r}" if scheme else "no scheme"
        raise InvalidPath(
            f"invalid tinker path {tinker_path[:300]!r}: {what}",
            hint="checkpoint paths look like tinker://<run_id>/<weights|sampler_weights|"
            "external_weights>/<name>",
        )
    parts = tinker_path[len(SCHEME) :].split("/")
    if len(parts) != 3:
        raise InvalidPath(
            f"invalid tinker path {tinker_path[:300]!r}: expected 3 segments after tinker://, "
            f"got {len(parts)}",
            hint="checkpoint paths look like tinker://<run_id>/<kind>/<name>",
        )
    run_id, kind, name = parts
    return ParsedCheckpointTinkerPath.from_parts(run_id, CheckpointKind.parse(kind), name)


def format_tinker_path(run_id: str, kind: CheckpointKind | str, name: str) -> str:
    return ParsedCheckpointTinkerPath.from_parts(run_id, kind, name).tinker_path
