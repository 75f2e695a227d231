"""UserEdit: the per-user artifact (directions + metadata), safetensors I/O and a content-hash id."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import EditConfig, HookPoint, Position

FORMAT = "chameleon-edit/1"


class EditFileError(ValueError):
    """An edit file is missing, corrupt, tampered with, or for another model."""


@dataclass(frozen=True)
class UserEdit:
    """Per selected layer: an orthonormal personalized basis (r×d) and a unit neutral direction (d).

    The edit applied at inference on layer ``layers[i]`` is
    ``x ← x + α·P_iᵀP_i x − β·(n_i·x) n_i`` (optionally bounded relative to ‖x‖).
    """

    layers: tuple[int, ...]
    personal: torch.Tensor  # (n_layers, rank, hidden)
    neutral: torch.Tensor  # (n_layers, hidden)
    hook_point: HookPoint
    strengths: EditConfig
    model: dict[str, Any]
    insights: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    gap: torch.Tensor | None = None  # (n_layers, rank): class-mean gap along each basis row ("add" mode)
    # the strengths exactly as a loaded file wrote them: the id stays the file's id even when a newer
    # EditConfig has gained fields (their defaults would otherwise change the dumped JSON)
    written_strengths: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.layers)
        if self.personal.ndim != 3 or self.personal.shape[0] != n:
            raise EditFileError(
                f"personal must be (n_layers={n}, rank, hidden), got {tuple(self.personal.shape)}"
            )
        if self.gap is None:
            object.__setattr__(self, "gap", torch.zeros(n, self.personal.shape[1]))
        elif tuple(self.gap.shape) != tuple(self.personal.shape[:2]):
            raise EditFileError(
                f"gap must be (n_layers, rank)={tuple(self.personal.shape[:2])}, got {tuple(self.gap.shape)}"
            )
        if self.neutral.shape != (n, self.personal.shape[2]):
            raise EditFileError(f"neutral must be ({n}, hidden), got {tuple(self.neutral.shape)}")
        if len(set(self.layers)) != n:
            raise EditFileError(f"duplicate layers in {self.layers}")

    @property
    def gaps(self) -> torch.Tensor:
        assert self.gap is not None
        return self.gap

    @property
    def alpha(self) -> float:
        return self.strengths.alpha

    @property
    def beta(self) -> float:
        return self.strengths.beta

    @property
    def positions(self) -> Position:
        return self.strengths.positions

    def with_strengths(self, **changes: Any) -> UserEdit:
        """A copy with other strengths/positions (the directions are shared)."""
        return replace(self, strengths=self.strengths.model_copy(update=changes))

    def _strengths_json(self) -> dict[str, Any]:
        written = self.written_strengths
        if written is not None and EditConfig.model_validate(written) == self.strengths:
            return written
        return self.strengths.model_dump(mode="json")

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready (the content hash covers it, minus provenance)."""
        return {
            "format": FORMAT,
            "layers": list(self.layers),
            "hook_point": self.hook_point,
            "strengths": self._strengths_json(),
            "model": self.model,
            "insights": self.insights,
            "stats": self.stats,
            "config": self.config,
        }

    @property
    def id(self) -> str:
        """Content hash of tensors and metadata (creation time and versions excluded)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.metadata(), sort_keys=True, default=str).encode())
        for t in (self.personal, self.neutral, self.gaps):
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    def to_bytes(self) -> bytes:
        meta = {
            "chameleon": json.dumps(self.metadata(), sort_keys=True, default=str),
            "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
            "id": self.id,
        }
        tensors = {
            "personal": self.personal.detach().to(torch.float32).contiguous(),
            "neutral": self.neutral.detach().to(torch.float32).contiguous(),
            "gap": self.gaps.detach().to(torch.float32).contiguous(),
        }
        return st_save(tensors, metadata=meta)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        return atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> UserEdit:
        try:
            tensors = st_load(data)
            meta_raw = _safetensors_metadata(data)
        except Exception as exc:  # safetensors raises several types
            raise EditFileError(f"{source} is not a readable Chameleon edit: {exc}") from exc
        if "chameleon" not in meta_raw or "personal" not in tensors or "neutral" not in tensors:
            raise EditFileError(f"{source} is a safetensors file but not a Chameleon edit (no metadata)")
        try:
            meta = json.loads(meta_raw["chameleon"])
            if meta.get("format") != FORMAT:
                raise EditFileError(
                    f"{source}: unsupported edit format {meta.get('format')!r}, expected {FORMAT}"
                )
            edit = cls(
                layers=tuple(int(x) for x in meta["layers"]),
                personal=tensors["personal"],
                neutral=tensors["neutral"],
                gap=tensors.get("gap"),
                hook_point=meta["hook_point"],
                strengths=EditConfig.model_validate(meta["strengths"]),
                model=meta["model"],
                insights=meta.get("insights", {}),
                stats=meta.get("stats", {}),
                config=meta.get("config", {}),
                provenance=json.loads(meta_raw.get("provenance", "{}")),
                written_strengths=dict(meta["strengths"]),
            )
        except EditFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # bad JSON, fields or values
            problem = f"{type(exc).__name__}: {exc}"
            raise EditFileError(f"{source} has damaged Chameleon metadata: {problem}") from exc
        stored = meta_raw.get("id")
        if stored is not None and stored != edit.id:
            raise EditFileError(
                f"{source} was modified after it was written: stored id {stored} != content {edit.id}. "
                "Refit the user or restore the original file."
            )
        return edit

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserEdit:
        p = Path(path)
        if not p.is_file():
            raise EditFileError(f"edit file not found: {p}. Fit one with `chameleon fit ... --out {p}`.")
        return cls.from_bytes(p.read_bytes(), source=str(p))

    def check_model(self, identity: dict[str, Any]) -> None:
        """Fail clearly when this edit was fitted on a different model."""
        mine = self.model.get("config_hash")
        theirs = identity.get("config_hash")
        if mine != theirs:
            raise EditFileError(
                f"edit {self.id} was fitted on model {self.model.get('name')!r} (config {mine}) but the "
                f"loaded model is {identity.get('name')!r} (config {theirs}). Load the edit's model "
                f"(--model {self.model.get('name')}) or refit the user on this model."
            )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__", {}))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
