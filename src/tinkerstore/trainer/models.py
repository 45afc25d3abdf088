"""Base models for the reference trainer, built locally and deterministically (no model hub).

Two kinds of ``base_model`` are accepted:

* a name from :data:`TINY_MODELS` (``tiny-qwen3``, ``tiny-llama``): a small Hugging Face
  architecture built from its config with a fixed seed, so every process on every machine gets
  the same weights, plus a byte-level BPE tokenizer trained here on a fixed text;
* a path to a local Hugging Face model directory (``config.json`` + ``*.safetensors``). Pickled
  weights (``*.bin``, ``*.pt``) are refused: we never unpickle.

:func:`write_model_dir` writes a tiny model as such a directory (config, safetensors weights and
tokenizer files) so tests, ``PeftModel.from_pretrained`` and benchmark peers can load the very
same model by path.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

from tinkerstore.errors import InvalidInput

__all__ = [
    "SPECIAL_TOKENS",
    "TINY_MODELS",
    "BaseModel",
    "TinySpec",
    "available_base_models",
    "build_tokenizer",
    "load_base_model",
    "write_model_dir",
]

# Eager attention is exact and simple on CPU and identical between the backend and a model
# rebuilt by a test or by peft, so logits can be compared tightly.
ATTN_IMPLEMENTATION = "eager"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TinySpec:
    """A named tiny model: its architecture, its config values and its init seed."""

    arch: str
    config: dict[str, Any]
    init_seed: int


_COMMON: dict[str, Any] = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    # Separate lm_head so train_unembed adapts exactly one module.
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "pad_token_id": None,
}

TINY_MODELS: dict[str, TinySpec] = {
    "tiny-qwen3": TinySpec(
        arch="qwen3",
        config={**_COMMON, "intermediate_size": 128, "num_key_value_heads": 2, "head_dim": 16},
        init_seed=1003,
    ),
    "tiny-llama": TinySpec(
        arch="llama",
        config={
            **_COMMON,
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_key_value_heads": 4,
            "num_hidden_layers": 3,
        },
        init_seed=2003,
    ),
}
_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {"qwen3": Qwen3Config, "llama": LlamaConfig}

# The fixed text the tokenizer's merges are learned from. Changing it changes every token id:
# treat it as part of the format.
_CORPUS = """
The service keeps checkpoints of small language models. A training run saves its state every few
steps, and a sampler reads the latest weights to answer prompts. Each checkpoint has a name, a
time, a size and a path, and the path starts with tinker. When a user asks for the list of runs,
the server returns the runs in order, with the last checkpoint of each one. The weights are
stored as tensors in safetensors files, and the metadata is stored as JSON. Nothing is ever
pickled. A download uses a signed address that expires after a while; the client fetches every
file and checks its size. The model learns to predict the next token from the tokens before it.
The loss is the sum of the weighted negative log probabilities of the target tokens. Adam keeps
two moments for every parameter and a step counter, and the learning rate sets the size of each
update. Where there is a question there is an answer, and where there is an answer there is
another question. One, two, three, four, five, six, seven, eight, nine, ten. Hello world! The
quick brown fox jumps over the lazy dog. def main(): return 0 if __name__ == "__main__" else 1
"""
_MAX_MERGES = 700

_lock = threading.Lock()


@dataclass
class BaseModel:
    """A freshly built (unshared) base model with its tokenizer, if it has one."""

    name: str
    arch: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None


def available_base_models() -> list[str]:
    return sorted(TINY_MODELS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which ByteLevel BPE vocabularies use."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _learn_merges(words: list[str], max_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair first).

    Written out here rather than using a library trainer so the result depends only on this code
    and the corpus, never on hash-map iteration order.
    """
    counts = Counter(words)
    splits = {word: list(word) for word in counts}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in counts.items():
            parts = splits[word]
            for pair in itertools.pairwise(parts):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for word, parts in splits.items():
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = [piece for piece, _ in pre.pre_tokenize_str(_CORPUS)]
    budget = vocab_size - 256 - len(SPECIAL_TOKENS)
    merges = _learn_merges(words, min(_MAX_MERGES, budget))
    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    specials = list(SPECIAL_TOKENS)
    # Pad with reserved specials (as Llama 3 does) so the tokenizer covers the model's vocab.
    while len(vocab) + len(specials) < vocab_size:
        specials.append(f"<|reserved_{len(specials) - len(SPECIAL_TOKENS)}|>")
    for token in specials:
        vocab[token] = len(vocab)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The tiny models' tokenizer: byte-level BPE, ``<|endoftext|>`` as EOS and pad, ChatML."""
    tok = Tokenizer.from_str(_tokenizer_json(vocab_size))
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


@lru_cache(maxsize=len(TINY_MODELS))
def _pristine_tiny(name: str) -> PreTrainedModel:
    spec = TINY_MODELS[name]
    eos = build_tokenizer(spec.config["vocab_size"]).convert_tokens_to_ids("<|endoftext|>")
    config = _CONFIG_CLASSES[spec.arch](**{**spec.config, "eos_token_id": eos})
    config._attn_implementation = ATTN_IMPLEMENTATION
    # fork_rng: building a model must not disturb (or depend on) the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        model: PreTrainedModel = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
        )
    model.config.name_or_path = name
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _read_json(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_CONFIG_BYTES} bytes", hint="is it JSON?")
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise InvalidInput(f"{path} is not a JSON object")
    return value


def _load_local(directory: Path) -> BaseModel:
    if not any(directory.glob("*.safetensors")):
        raise InvalidInput(
            f"model directory {directory} has no *.safetensors weights",
            hint="pickled weights (.bin, .pt) are refused; convert them to safetensors",
        )
    arch = str(_read_json(directory / "config.json").get("model_type", "unknown"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInput(
            f"cannot load a causal LM from {directory}: {exc}",
            hint="give a Hugging Face model directory with config.json and safetensors weights",
        ) from exc
    tokenizer = None
    if (directory / "tokenizer.json").exists() or (directory / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model.eval()  # type: ignore[no-untyped-call]
    return BaseModel(name=str(directory), arch=arch, model=model, tokenizer=tokenizer)


def load_base_model(base_model: str) -> BaseModel:
    """A new, unshared model for ``base_model``: a tiny model's name or a local HF directory."""
    if base_model in TINY_MODELS:
        spec = TINY_MODELS[base_model]
        with _lock:
            pristine = _pristine_tiny(base_model)
        return BaseModel(
            name=base_model,
            arch=spec.arch,
            model=copy.deepcopy(pristine),
            tokenizer=build_tokenizer(spec.config["vocab_size"]),
        )
    directory = Path(base_model)
    if directory.is_absolute() and (directory / "config.json").is_file():
        return _load_local(directory)
    raise InvalidInput(
        f"unknown base model {base_model!r}",
        hint=f"use one of {', '.join(available_base_models())}, "
        "or the absolute path of a local Hugging Face model directory",
    )


def write_model_dir(name: str, directory: Path) -> Path:
    """Write tiny model ``name`` as a Hugging Face directory (config, safetensors, tokenizer).

    Loading ``str(directory)`` then gives bit-identical weights to loading ``name``.
    """
    if name not in TINY_MODELS:
        raise InvalidInput(
            f"unknown tiny model {name!r}", hint=f"use one of {available_base_models()}"
        )
    base = load_base_model(name)
    directory.mkdir(parents=True, exist_ok=True)
    base.model.save_pretrained(directory, safe_serialization=True)
    assert base.tokenizer is not None
    base.tokenizer.save_pretrained(directory)
    return directory
