"""Shared helpers for benchmark scripts: provenance-stamped JSON results and markdown tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chameleon_llm.edit import atomic_write_text
from chameleon_llm.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict[str, Any], *, model: str, config: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/{name}.json`` with model, configuration, versions and git commit."""
    data = {"benchmark": name, "model": model, "config": config, **provenance(), **payload}
    return atomic_write_text(RESULTS / f"{name}.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
