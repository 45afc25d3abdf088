"""Training and sampling on top of the store: the service half of the trainer.

The service owns ids, records, access, commit and formats of the envelope; the backend
(``tinkerstore.trainer.Backend``) only computes and reads or writes the directory it is handed.
Every save goes backend → a private staging directory → ``Store.begin_save`` → commit, so a
checkpoint is visible only once whole. Every load goes ``Store.download_to`` (checksums verified)
→ staging directory → backend, so corrupted bytes never reach a model.

Models live in the backend's memory. After a restart they are gone: requests for them fail with
a user error naming the run's last training checkpoint to resume from.

Methods are synchronous and meant to run on the futures executor (one model's requests in
``seq_id`` order); they raise ``tinkerstore.errors`` for the failed-future channel.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinkerstore.errors import (
    AlreadyExists,
    IncompatibleCheckpoint,
    InvalidInput,
    ModelNotFound,
    NotFound,
)
from tinkerstore.service.keys import Principal
from tinkerstore.service.store import Store
from tinkerstore.store.catalog.base import RunRecord, SamplerRecord
from tinkerstore.trainer.backend import (
    AdamSpec,
    Backend,
    BaseModelRef,
    Datum,
    FwdBwdResult,
    LoraSpec,
    ModelInfo,
    SampledSequence,
    SamplingSpec,
)
from tinkerstore.types.paths import CheckpointKind, ParsedCheckpointTinkerPath

__all__ = ["MAX_AGE_RECIPIENTS", "Training", "WeightsSummary", "encrypt_for_recipients"]

MAX_AGE_RECIPIENTS = 10


@dataclass(frozen=True)
class WeightsSummary:
    """What ``weights_info`` answers: the configuration of the run a checkpoint came from."""

    base_model: str
    is_lora: bool
    lora_rank: int | None
    train_attn: bool | None
    train_mlp: bool | None
    train_unembed: bool | None


def lora_spec(config: Mapping[str, Any] | None) -> LoraSpec:
    config = config or {}
    return LoraSpec(
        rank=int(config.get("rank", 32)),
        seed=None if config.get("seed") is None else int(config["seed"]),
        train_attn=bool(config.get("train_attn", True)),
        train_mlp=bool(config.get("train_mlp", True)),
        train_unembed=bool(config.get("train_unembed", True)),
    )


def encrypt_for_recipients(directory: Path, recipients: Sequence[str]) -> None:
    """Encrypt every file under ``directory`` to all ``recipients`` (age v1, binary), replacing
    ``name`` by ``name.age``. Recipients are native X25519 (``age1…``) or SSH public keys."""
    import pyrage

    if not recipients:
        raise InvalidInput(
            "age_encryption_recipients is empty", hint="omit it to export in the clear"
        )
    if len(recipients) > MAX_AGE_RECIPIENTS:
        raise InvalidInput(
            f"{len(recipients)} age recipients given", hint=f"use at most {MAX_AGE_RECIPIENTS}"
        )
    parsed: list[Any] = []
    for text in recipients:
        try:
            if text.startswith("age1"):
                parsed.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
                parsed.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise ValueError("unknown recipient type")
        except Exception as exc:  # pyrage raises its own error types
            raise InvalidInput(
                f"invalid age recipient {text[:80]!r}: {exc}",
                hint="give age1... X25519 keys or ssh-ed25519 / ssh-rsa public keys",
            ) from exc
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        path.with_name(path.name + ".age").write_bytes(pyrage.encrypt(path.read_bytes(), parsed))
        path.unlink()


class Training:
    def __init__(self, store: Store, backend: Backend, work_dir: Path) -> None:
        self.store = store
        self.backend = backend
        self._work = Path(work_dir)
        self._work.mkdir(parents=True, exist_ok=True)
        self._live: set[str] = set()  # model ids loaded in this process
        self._ephemeral: dict[str, Path] = {}  # unnamed sampler snapshots of this process
        self._cache: dict[str, Path] = {}  # checkpoint version id -> verified local copy
        self._lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _staging(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="stage-", dir=self._work))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _model(self, principal: Principal, model_id: str) -> RunRecord:
        """The run of a live model the principal owns; a clear error otherwise."""
        run = self.store.catalog.get_run(model_id)
        if run is None or run.owner_id != principal.user_id:
            raise ModelNotFound(
                f"model {model_id!r} not found", hint="create a training client first"
            )
        if model_id not in self._live:
            last = self.store.latest_checkpoint(principal, model_id, CheckpointKind.WEIGHTS)
            resume = (
                f"create a training client from its last checkpoint: tinker://{model_id}/weights/{last.name}"
                if last
                else "it saved no training checkpoint; create a new training client"
            )
            raise ModelNotFound(
                f"model {model_id!r} is no longer loaded (the server restarted or unloaded it)",
                hint=resume,
            )
        return run

    def _checkpoint_dir(self, principal: Principal, tinker_path: str) -> tuple[Path, Any]:
        """A verified local copy of a checkpoint the principal may read (cached by version)."""
        record = self.store.resolve(principal, tinker_path)
        with self._lock:
            cached = self._cache.get(record.version_id)
        if cached is not None and cached.exists():
            return cached, record
        target = self._work / "cache" / record.version_id
        if not target.exists():
            self.store.download_to(principal, tinker_path, target)
        with self._lock:
            self._cache[record.version_id] = target
        return target, record

    def _new_run(
        self,
        principal: Principal,
        model_id: str,
        info: ModelInfo,
        user_metadata: Mapping[str, str] | None,
        session_id: str,
    ) -> None:
        lora = info.lora
        try:
            self.store.create_run(
                principal,
                model_id,
                base_model=info.base_model,
                lora_config={
                    "rank": lora.rank,
                    "seed": lora.seed,
                    "train_attn": lora.train_attn,
                    "train_mlp": lora.train_mlp,
                    "train_unembed": lora.train_unembed,
                },
                user_metadata=user_metadata,
                session_id=session_id,
            )
        except BaseException:
            self.backend.unload(model_id)
            raise
        with self._lock:
            self._live.add(model_id)

    # -- models ------------------------------------------------------------------------------
    def create_model(
        self,
        principal: Principal,
        *,
        session_id: str,
        model_seq_id: int,
        base_model: str,
        lora_config: Mapping[str, Any] | None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> str:
        model_id = f"{session_id}:train:{model_seq_id}"
        if self.store.catalog.get_run(model_id) is not None:
            raise AlreadyExists(
                f"model {model_id!r} already exists", hint="use a new model_seq_id or session"
            )
        info = self.backend.create_model(model_id, base_model, lora_spec(lora_config))
        self._new_run(principal, model_id, info, user_metadata, session_id)
        return model_id

    def create_from_state(
        self,
        principal: Principal,
        *,
        session_id: str,
        model_seq_id: int,
        tinker_path: str,
        optimizer: bool,
        base_model: str | None = None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create-via-load: a new model and run configured from a training checkpoint."""
        model_id = f"{session_id}:train:{model_seq_id}"
        if self.store.catalog.get_run(model_id) is not None:
            raise AlreadyExists(f"model {model_id!r} already exists", hint="use a new model_seq_id")
        directory, _ = self._training_dir(principal, tinker_path)
        info = self.backend.create_model_from_state(
            model_id, directory, with_optimizer=optimizer, base_model=base_model
        )
        self._new_run(principal, model_id, info, user_metadata, session_id)
        return model_id

    def info(self, principal: Principal, model_id: str) -> ModelInfo:
        self._model(principal, model_id)
        return self.backend.info(model_id)

    def forward_backward(
        self,
        principal: Principal,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: dict[str, float] | None,
        *,
        forward_only: bool,
    ) -> FwdBwdResult:
        self._model(principal, model_id)
        self.store.catalog.touch_run(model_id, self.store.now())
        return self.backend.forward_backward(
            model_id, data, loss_fn, loss_fn_config, forward_only=forward_only
        )

    def optim_step(self, principal: Principal, model_id: str, adam: AdamSpec) -> dict[str, float]:
        self._model(principal, model_id)
        return self.backend.optim_step(model_id, adam)

    def unload(self, principal: Principal, model_id: str) -> None:
        self._model(principal, model_id)
        self.backend.unload(model_id)
        with self._lock:
            self._live.discard(model_id)

    # -- saving ------------------------------------------------------------------------------
    def _save(
        self,
        principal: Principal,
        model_id: str,
        kind: CheckpointKind,
        name: str,
        write: Any,
        *,
        overwrite: bool = False,
        ttl_seconds: int | None = None,
        user_metadata: Mapping[str, str] | None = None,
        recipients: Sequence[str] | None = None,
    ) -> tuple[str, int]:
        self._model(principal, model_id)
        # begin_save first: a name clash or a bad TTL fails before any work is done.
        with (
            self.store.begin_save(
                principal,
                model_id,
                kind,
                name,
                overwrite=overwrite,
                ttl_seconds=ttl_seconds,
                user_metadata=user_metadata,
            ) as pending,
            self._staging() as staging,
        ):
            write(model_id, staging)
            if recipients is not None:
                encrypt_for_recipients(staging, recipients)
            pending.add_directory(staging)
            record = pending.commit()
        return pending.tinker_path, record.size_bytes

    def save_state(self, principal: Principal, model_id: str, name: str, **options: Any) -> str:
        path, _ = self._save(
            principal, model_id, CheckpointKind.WEIGHTS, name, self.backend.save_state, **options
        )
        return path

    def save_sampler(self, principal: Principal, model_id: str, name: str, **options: Any) -> str:
        path, _ = self._save(
            principal,
            model_id,
            CheckpointKind.SAMPLER_WEIGHTS,
            name,
            self.backend.save_sampler_weights,
            **options,
        )
        return path

    def save_external(
        self,
        principal: Principal,
        model_id: str,
        name: str,
        *,
        ttl_seconds: int | None = None,
        recipients: Sequence[str] | None = None,
    ) -> tuple[str, int]:
        return self._save(
            principal,
            model_id,
            CheckpointKind.EXTERNAL_WEIGHTS,
            name,
            self.backend.export_weights,
            ttl_seconds=ttl_seconds,
            recipients=recipients,
        )

    def snapshot_sampler(
        self, principal: Principal, model_id: str, *, session_id: str, sampling_session_seq_id: int
    ) -> str:
        """Unnamed save_weights_for_sampler: an ephemeral sampler bound to the current weights."""
        run = self._model(principal, model_id)
        sampler_id = f"{session_id}:sample:{sampling_session_seq_id}"
        target = self._work / "ephemeral" / uuid.uuid4().hex
        target.mkdir(parents=True)
        self.backend.save_sampler_weights(model_id, target)
        with self._lock:
            self._ephemeral[sampler_id] = target
        self.store.catalog.create_sampler(
            SamplerRecord(
                sampler_id=sampler_id,
                owner_id=principal.user_id,
                session_id=session_id,
                base_model=run.base_model,
                model_path=None,
                created_at=self.store.now(),
            )
        )
        return sampler_id

    # -- loading -----------------------------------------------------------------------------
    def _training_dir(self, principal: Principal, tinker_path: str) -> tuple[Path, Any]:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        if parsed.kind is not CheckpointKind.WEIGHTS:
            raise IncompatibleCheckpoint(
                f"{tinker_path} is a {parsed.checkpoint_type} checkpoint, not training state",
                hint="load a tinker://<run>/weights/<name> checkpoint (saved with save_state)",
            )
        return self._checkpoint_dir(principal, tinker_path)

    def load_state(
        self, principal: Principal, model_id: str, tinker_path: str, *, optimizer: bool
    ) -> None:
        self._model(principal, model_id)
        directory, _ = self._training_dir(principal, tinker_path)
        self.backend.load_state(model_id, directory, with_optimizer=optimizer)

    def weights_info(self, principal: Principal, tinker_path: str) -> WeightsSummary:
        record = self.store.resolve(principal, tinker_path)
        run = self.store.catalog.get_run(record.run_id)
        if run is None:
            raise NotFound(f"the training run of {tinker_path} no longer exists")
        lora = run.lora_config or {}
        return WeightsSummary(
            base_model=run.base_model,
            is_lora=run.is_lora,
            lora_rank=run.lora_rank,
            train_attn=lora.get("train_attn"),
            train_mlp=lora.get("train_mlp"),
            train_unembed=lora.get("train_unembed"),
        )

    # -- sampling ----------------------------------------------------------------------------
    def create_sampling_session(
        self,
        principal: Principal,
        *,
        session_id: str,
        sampling_session_seq_id: int,
        model_path: str | None,
        base_model: str | None,
    ) -> str:
        sampler_id = f"{session_id}:sample:{sampling_session_seq_id}"
        if model_path is not None:
            parsed = ParsedCheckpointTinkerPath.from_tinker_path(model_path)
            if parsed.kind is CheckpointKind.EXTERNAL_WEIGHTS:
                raise IncompatibleCheckpoint(
                    f"{model_path} is an external export and cannot be sampled from",
                    hint="sample from a sampler_weights or weights checkpoint",
                )
            _, record = self._checkpoint_dir(principal, model_path)
            run = self.store.catalog.get_run(record.run_id)
            base = run.base_model if run else (base_model or "")
        elif base_model is not None:
            if base_model not in self.backend.base_models() and not Path(base_model).is_absolute():
                raise InvalidInput(
                    f"unknown base model {base_model!r}",
                    hint=f"available: {', '.join(self.backend.base_models())}",
                )
            base = base_model
        else:
            raise InvalidInput("give model_path or base_model to create a sampling session")
        self.store.catalog.create_sampler(
            SamplerRecord(
                sampler_id=sampler_id,
                owner_id=principal.user_id,
                session_id=session_id,
                base_model=base,
                model_path=model_path,
                created_at=self.store.now(),
            )
        )
        return sampler_id

    def get_sampler(self, principal: Principal, sampler_id: str) -> SamplerRecord:
        sampler = self.store.catalog.get_sampler(sampler_id)
        if sampler is None or sampler.owner_id != principal.user_id:
            raise NotFound(
                f"sampler {sampler_id!r} not found", hint="create a sampling client first"
            )
        return sampler

    def sample(
        self,
        principal: Principal,
        sampler_id: str,
        prompt: Any,
        spec: SamplingSpec,
        *,
        num_samples: int,
        prompt_logprobs: bool,
    ) -> tuple[list[SampledSequence], Any]:
        sampler = self.get_sampler(principal, sampler_id)
        weights: Path | BaseModelRef
        if sampler.model_path is not None:
            weights, _ = self._checkpoint_dir(principal, sampler.model_path)
        else:
            with self._lock:
                ephemeral = self._ephemeral.get(sampler_id)
            if ephemeral is not None:
                weights = ephemeral
            elif sampler.base_model:
                weights = BaseModelRef(sampler.base_model)
            else:  # pragma: no cover - records always carry a base model
                raise NotFound(f"sampler {sampler_id!r} has no weights")
        return self.backend.sample(
            weights, prompt, spec, num_samples=num_samples, prompt_logprobs=prompt_logprobs
        )
