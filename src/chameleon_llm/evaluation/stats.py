"""Seeded bootstrap over queries: confidence intervals of a metric and of paired differences.

Every resample draws query indices with replacement and recomputes the official corpus metric with
:func:`chameleon_llm.lamp.metrics.aggregate` (so macro-F1 and RMSE are resampled as corpus metrics,
not averaged). Methods compared in one call share the same draws (a paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from chameleon_llm.lamp.metrics import aggregate
from chameleon_llm.lamp.tasks import TaskSpec

Rows = Sequence[Mapping[str, float]]

LOWER_IS_BETTER = frozenset({"MAE", "RMSE"})


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def bootstrap_samples(
    spec: TaskSpec, rows_by_method: Mapping[str, Rows], n: int = 1000, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """For each method, each metric's values over ``n`` shared resamples of the query indices.

    All methods' rows must be aligned (row ``i`` is the same query for every method).
    """
    sizes = {len(r) for r in rows_by_method.values()}
    if len(sizes) != 1:
        raise ValueError(f"methods must have the same queries, got sizes {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise ValueError("no queries to resample")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, size, size=(n, size))
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, rows in rows_by_method.items():
        cols: dict[str, list[float]] = {}
        for idx in draws:
            for metric, value in aggregate(spec, [rows[i] for i in idx]).items():
                cols.setdefault(metric, []).append(value)
        out[method] = {m: np.asarray(v) for m, v in cols.items()}
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def metric_cis(samples: Mapping[str, np.ndarray], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CI of each metric from its bootstrap values."""
    return {m: percentile_ci(v, level) for m, v in samples.items()}


def paired_differences(
    spec: TaskSpec,
    rows_a: Rows,
    rows_b: Rows,
    *,
    samples_a: Mapping[str, np.ndarray],
    samples_b: Mapping[str, np.ndarray],
    level: float = 0.95,
) -> dict[str, dict[str, float | bool | list[float]]]:
    """Per metric: ``diff`` = metric(a) − metric(b) on all queries, its bootstrap CI, and whether a is
    significantly better (CI excludes 0 on the good side; lower is better for MAE/RMSE)."""
    point_a, point_b = aggregate(spec, rows_a), aggregate(spec, rows_b)
    out: dict[str, dict[str, float | bool | list[float]]] = {}
    for metric in point_a:
        diffs = samples_a[metric] - samples_b[metric]
        lo, hi = percentile_ci(diffs, level)
        better = lo > 0 if higher_is_better(metric) else hi < 0
        worse = hi < 0 if higher_is_better(metric) else lo > 0
        out[metric] = {
            "diff": point_a[metric] - point_b[metric],
            "ci": [lo, hi],
            "significantly_better": bool(better),
            "significantly_worse": bool(worse),
        }
    return out


def paired_bootstrap(
    spec: TaskSpec, rows_a: Rows, rows_b: Rows, n: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float | bool | list[float]]]:
    """Paired bootstrap of metric(a) − metric(b) over the same queries (rows aligned)."""
    samples = bootstrap_samples(spec, {"a": rows_a, "b": rows_b}, n=n, seed=seed)
    return paired_differences(
        spec, rows_a, rows_b, samples_a=samples["a"], samples_b=samples["b"], level=level
    )
