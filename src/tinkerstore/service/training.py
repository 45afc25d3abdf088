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

The work directory holds only derived, disposable data: verified copies of checkpoints (keyed
by immutable version id), staging directories, unnamed sampler snapshots and tokenizer files
for the tiny models. Stale staging directories from a crashed process are removed at start-up.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import urllib.parse
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
    RunNotFound,
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

__all__ = [
    "MAX_AGE_RECIPIENTS",
    "Training",
    "WeightsSummary",
    "encrypt_for_recipients",
    "missing_model",
    "weights_summary",
]

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


def weights_summary(store: Store, principal: Principal, tinker_path: str) -> WeightsSummary:
    """The configuration of the run a visible checkpoint belongs to (``weights_info``).

    SDK 0.25 builds a new model from exactly these values before loading the checkpoint into it,
    so a LoRA flag the run did not record reads as ``True``, the SDK's own default.
    """
    record = store.resolve(principal, tinker_path)
    run = store.catalog.get_run(record.run_id)
    if run is None:  # a checkpoint always has its run; say so plainly if storage disagrees
        raise RunNotFound(
            f"the training run of {tinker_path} is missing from the catalog",
            hint="run `tinkerstore verify` to check the store",
        )
    lora = run.lora_config or {}

    def flag(key: str) -> bool | None:
        value = lora.get(key)
        return bool(value) if value is not None else (True if run.is_lora else None)

    return WeightsSummary(
        base_model=run.base_model,
        is_lora=run.is_lora,
        lora_rank=run.lora_rank,
        train_attn=flag("train_attn"),
        train_mlp=flag("train_mlp"),
        train_unembed=flag("train_unembed"),
    )


def missing_model(store: Store, principal: Principal, model_id: str) -> ModelNotFound:
    """The error for a model that is not loaded here, saying how to carry on."""
    run = store.catalog.get_run(model_id)
    if run is None or run.owner_id != principal.user_id:
        return ModelNotFound(f"model {model_id!r} not found", hint="create a training client first")
    last = store.latest_checkpoint(principal, model_id, CheckpointKind.WEIGHTS)
    resume = (
        f"create a training client from its last checkpoint: tinker://{model_id}/weights/{last.name}"
        if last
        else "it saved no training checkpoint; create a new training client"
    )
    return ModelNotFound(
        f"model {model_id!r} is not loaded on this server (it restarted or unloaded it, or "
        "this request reached another replica: route training requests by session id, "
        "see docs/scale.md)",
        hint=resume,
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
        # Left over by a process that died mid-save or mid-snapshot: never committed, never read.
        for stale in [*self._work.glob("stage-*"), self._work / "ephemeral"]:
            shutil.rmtree(stale, ignore_errors=True)
        self._live: set[str] = set()  # model ids loaded in this process
        # Samplers without a checkpoint (unnamed snapshots, base models), known to this process
        # only: after a restart they fail loudly instead of sampling from the wrong weights.
        self._ephemeral: dict[str, Path | BaseModelRef] = {}
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

    def is_live(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._live

    def _model(self, principal: Principal, model_id: str) -> RunRecord:
        """The run of a live model the principal owns; a clear error otherwise."""
        run = self.store.catalog.get_run(model_id)
        if run is None or run.owner_id != principal.user_id or not self.is_live(model_id):
            raise missing_model(self.store, principal, model_id)
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

    def tokenizer_id(self, base_model: str) -> str:
        """What ``get_info`` answers as ``tokenizer_id``: something the SDK's ``get_tokenizer``
        loads offline with ``AutoTokenizer.from_pretrained``. For a tiny model that is a local
        directory of its tokenizer files (written once, a few kB); a local base model directory
        carries its own; anything else is passed through as a Hugging Face name."""
        if Path(base_model).is_absolute():
            return base_model
        try:
            from tinkerstore.trainer.models import TINY_MODELS, build_tokenizer
        except ImportError:  # another backend without the reference trainer installed
            return base_model
        spec = TINY_MODELS.get(base_model)
        if spec is None:
            return base_model
        target = self._work / "tokenizers" / base_model
        with self._lock:
            if not target.is_dir():
                staging = Path(tempfile.mkdtemp(prefix="stage-", dir=self._work))
                build_tokenizer(spec.config["vocab_size"]).save_pretrained(staging)
                target.parent.mkdir(exist_ok=True)
                staging.rename(target)  # readers never see a half-written directory
        return str(target.resolve())

    def release_session(self, principal: Principal, session_id: str) -> list[str]:
        """Unload the models and forget the samplers a finished session created here."""
        models = f"{session_id}:train:"
        samplers = f"{session_id}:sample:"
        with self._lock:
            gone = [m for m in self._live if m.startswith(models)]
            lost = [s for s in self._ephemeral if s.startswith(samplers)]
        released = []
        for model_id in gone:
            run = self.store.catalog.get_run(model_id)
            if run is not None and run.owner_id == principal.user_id:
                self.backend.unload(model_id)
                with self._lock:
                    self._live.discard(model_id)
                released.append(model_id)
        for sampler_id in lost:
            sampler = self.store.catalog.get_sampler(sampler_id)
            if sampler is not None and sampler.owner_id == principal.user_id:
                with self._lock:
                    weights = self._ephemeral.pop(sampler_id, None)
                if isinstance(weights, Path):
                    shutil.rmtree(weights, ignore_errors=True)
        return released

    def forward_backward(
        self,
        principal: Principal,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        *,
        forward_only: bool,
    ) -> FwdBwdResult:
        self._model(principal, model_id)
        config: dict[str, float] = {}
        for key, value in (loss_fn_config or {}).items():
            if isinstance(value, str) or not math.isfinite(value):
                raise InvalidInput(
                    f"loss_fn_config[{key!r}] = {value!r} is not a finite number",
                    hint="the reference trainer's losses take numeric settings only",
                )
            config[key] = float(value)
        self.store.catalog.touch_run(model_id, self.store.now())
        return self.backend.forward_backward(
            model_id, data, loss_fn, config, forward_only=forward_only
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
        """Unnamed save_weights_for_sampler: an ephemeral sampler bound to the current weights
        (a copy, so later training steps do not change what it samples)."""
        run = self._model(principal, model_id)
        sampler_id = f"{session_id}:sample:{sampling_session_seq_id}"
        self._record_sampler(principal, sampler_id, session_id, run.base_model, None)
        target = self._work / "ephemeral" / urllib.parse.quote(sampler_id, safe="")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        self.backend.save_sampler_weights(model_id, target)
        with self._lock:
            self._ephemeral[sampler_id] = target
        return sampler_id

    def _record_sampler(
        self,
        principal: Principal,
        sampler_id: str,
        session_id: str,
        base_model: str,
        model_path: str | None,
    ) -> SamplerRecord:
        """Record a sampler; the same request again (a retry) finds the same record."""
        record = self.store.catalog.create_sampler(
            SamplerRecord(
                sampler_id=sampler_id,
                owner_id=principal.user_id,
                session_id=session_id,
                base_model=base_model,
                model_path=model_path,
                created_at=self.store.now(),
            )
        )
        if (record.owner_id, record.base_model, record.model_path) != (
            principal.user_id,
            base_model,
            model_path,
        ):
            raise AlreadyExists(
                f"sampling session {sampler_id!r} already exists with other weights",
                hint="use a new sampling_session_seq_id",
            )
        return record

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
        return weights_summary(self.store, principal, tinker_path)

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
            # Fetched and verified now, so a bad path fails here and not at the first sample.
            _, record = self._checkpoint_dir(principal, model_path)
            run = self.store.catalog.get_run(record.run_id)
            base = run.base_model if run else (base_model or "")
            self._record_sampler(principal, sampler_id, session_id, base, model_path)
            return sampler_id
        if base_model is None:
            raise InvalidInput("give model_path or base_model to create a sampling session")
        if base_model not in self.backend.base_models() and not Path(base_model).is_absolute():
            raise InvalidInput(
                f"unknown base model {base_model!r}",
                hint=f"use one of {', '.join(self.backend.base_models())}, or the absolute "
                "path of a local Hugging Face model directory",
            )
        self._record_sampler(principal, sampler_id, session_id, base_model, None)
        with self._lock:
            self._ephemeral[sampler_id] = BaseModelRef(base_model)
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
                found = self._ephemeral.get(sampler_id)
            if found is None:
                raise NotFound(
                    f"sampler {sampler_id!r} is no longer loaded (the server restarted or its "
                    "session finished)",
                    hint="create a new sampling client (save_weights_and_get_sampling_client "
                    "or create_sampling_client)",
                )
            weights = found
        return self.backend.sample(
            weights, prompt, spec, num_samples=num_samples, prompt_logprobs=prompt_logprobs
        )
