"""The official LaMP metrics, reproducing ``eval/evaluation.py`` of LaMP-Benchmark/LaMP.

- Classification (LaMP-1, LaMP-2): predictions and golds are ``str(x).strip()``-ed and mapped to
  their index in the fixed label list, anything else to ``-1`` (so an unknown prediction is wrong,
  and — as officially — an unknown prediction *equals* an unknown gold). ``accuracy`` is the share
  of equal indices; ``f1`` is sklearn's macro F1 with ``labels=range(len(labels))``: every label
  counts, a label absent from both golds and predictions scores 0, and ``-1`` is no class.
- Rating (LaMP-3): ``float(pred.strip())``; when that fails the prediction becomes whichever of 1
  and 5 is farther from the gold (5 on a tie, i.e. gold 3). ``MAE`` and ``RMSE`` over all queries.
- Generation (LaMP-4…7): ROUGE-1 and ROUGE-L F-measure of ``rouge-score`` with its default
  tokenizer and ``use_stemmer=False`` (the default of HF ``evaluate``'s ``rouge``, which the
  official code calls without arguments). The official code reports the *median of 1000
  bootstrap means* (``BootstrapAggregator().mid``, unseeded numpy RNG); :func:`score` reports the
  plain mean by default, and reproduces the bootstrap exactly given ``rouge_bootstrap_seed``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from chameleon_llm.lamp.tasks import TaskSpec, resolve_task

# rouge-score type names used by the official evaluator, in the order it computes them.
_OFFICIAL_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_ROUGE_KEYS = {"rouge1": "rouge-1", "rougeL": "rouge-L"}
_BOOTSTRAP_SAMPLES = 1000


class _HasId(Protocol):
    id: str


def _spec(task: str | TaskSpec, golds: Mapping[str, str]) -> TaskSpec:
    return resolve_task(task, golds=golds.values())


def check_ids(preds: Mapping[str, str], golds: Mapping[str, str]) -> None:
    """Raise ``ValueError`` unless predictions and golds have the same ids (as the official code asserts)."""
    if not golds:
        raise ValueError("no gold outputs to score against")
    missing = [i for i in golds if i not in preds]
    extra = [i for i in preds if i not in golds]
    if missing or extra:
        raise ValueError(
            f"prediction ids and gold ids do not match: {len(missing)} gold ids have no prediction "
            f"(e.g. {missing[:3]}), {len(extra)} predictions have no gold (e.g. {extra[:3]}); "
            "predict every query of the split exactly once"
        )


def _label_index(labels: Sequence[str], value: str) -> int:
    text = str(value).strip()
    return labels.index(text) if text in labels else -1


def _gold_rating(qid: str, gold: str) -> float:
    try:
        return float(str(gold).strip())
    except ValueError:
        raise ValueError(f"gold rating of id {qid!r} is not a number: {gold!r}") from None


def rating_value(pred: str, gold: float) -> float:
    """The official mapping of a rating prediction: ``float(pred)``, else the farther of 1 and 5."""
    try:
        return float(str(pred).strip())
    except ValueError:
        return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0


def _rouge_rows(preds: Mapping[str, str], golds: Mapping[str, str]) -> dict[str, dict[str, float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_KEYS), use_stemmer=False)
    rows: dict[str, dict[str, float]] = {}
    for qid, gold in golds.items():
        scores = scorer.score(gold.strip(), preds[qid].strip())
        rows[qid] = {key: float(scores[name].fmeasure) for name, key in _ROUGE_KEYS.items()}
    return rows


def per_query_scores(
    task: str | TaskSpec, preds: Mapping[str, str], golds: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per-query values from which :func:`aggregate` rebuilds the official metrics.

    Classification rows: ``accuracy`` (1/0), ``pred_index`` and ``gold_index`` (label index, -1
    if unknown); rating rows: ``abs_error`` and ``squared_error``; generation rows: ``rouge-1`` and
    ``rouge-L`` F-measures.
    """
    spec = _spec(task, golds)
    check_ids(preds, golds)
    if spec.kind == "generation":
        return _rouge_rows(preds, golds)
    rows: dict[str, dict[str, float]] = {}
    for qid, gold in golds.items():
        if spec.kind == "classification":
            p, g = _label_index(spec.labels, preds[qid]), _label_index(spec.labels, gold)
            rows[qid] = {"accuracy": float(p == g), "pred_index": float(p), "gold_index": float(g)}
        else:
            gold_value = _gold_rating(qid, gold)
            error = rating_value(preds[qid], gold_value) - gold_value
            rows[qid] = {"abs_error": abs(error), "squared_error": error * error}
    return rows


def _macro_f1(pairs: Sequence[tuple[int, int]], n_labels: int) -> float:
    total = 0.0
    for label in range(n_labels):
        tp = sum(1 for p, g in pairs if p == label and g == label)
        predicted = sum(1 for p, _ in pairs if p == label)
        true = sum(1 for _, g in pairs if g == label)
        total += 2 * tp / (predicted + true) if predicted + true else 0.0
    return total / n_labels


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def aggregate(task: str | TaskSpec, rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Corpus metrics from :func:`per_query_scores` rows (any subset, e.g. a user or a bootstrap sample)."""
    spec = resolve_task(task)
    items = list(rows)
    if not items:
        raise ValueError("no per-query scores to aggregate")
    if spec.kind == "classification":
        pairs = [(int(r["pred_index"]), int(r["gold_index"])) for r in items]
        return {
            "accuracy": _mean([r["accuracy"] for r in items]),
            "f1": _macro_f1(pairs, len(spec.labels)),
        }
    if spec.kind == "rating":
        return {
            "MAE": _mean([r["abs_error"] for r in items]),
            "RMSE": math.sqrt(_mean([r["squared_error"] for r in items])),
        }
    return {key: _mean([r[key] for r in items]) for key in spec.metrics}


def bootstrap_rouge_mid(values: Mapping[str, Sequence[float]], seed: int) -> dict[str, float]:
    """The official ROUGE aggregate: median of 1000 bootstrap means, RNG seeded with ``seed``.

    ``values`` maps ``"rouge-1"``/``"rouge-L"`` to per-query F-measures. The draws replay those of
    ``np.random.seed(seed)`` followed by the official call (which resamples rouge1, rouge2, rougeL
    and rougeLsum in turn, 1000 index vectors each).
    """
    import numpy as np

    rng = np.random.RandomState(seed)
    n = len(next(iter(values.values())))
    result: dict[str, float] = {}
    for name in _OFFICIAL_ROUGE_TYPES:
        key = _ROUGE_KEYS.get(name)
        column = np.array(values[key], dtype=np.float64) if key is not None and key in values else None
        means = np.zeros(_BOOTSTRAP_SAMPLES)
        for i in range(_BOOTSTRAP_SAMPLES):
            index = rng.choice(np.arange(n), size=n)
            if column is not None:
                means[i] = np.mean(column[index])
        if key is not None:
            result[key] = float(np.percentile(means, 50.0))
    return result


def score(
    task: str | TaskSpec,
    preds: Mapping[str, str],
    golds: Mapping[str, str],
    *,
    rouge_bootstrap_seed: int | None = None,
) -> dict[str, float]:
    """Official metrics of ``preds`` against ``golds`` (both ``{id: output}``, same ids).

    Keys as the official evaluator: ``accuracy``/``f1``, ``MAE``/``RMSE`` or ``rouge-1``/``rouge-L``.
    A ``TaskSpec`` carrying a replaced label list (``labels.json``) scores against those labels.
    """
    spec = _spec(task, golds)
    rows = per_query_scores(spec, preds, golds)
    if spec.kind == "generation" and rouge_bootstrap_seed is not None:
        columns = {key: [rows[q][key] for q in golds] for key in spec.metrics}
        return bootstrap_rouge_mid(columns, rouge_bootstrap_seed)
    return aggregate(spec, rows.values())


def per_user_scores(
    task: str | TaskSpec,
    preds: Mapping[str, str],
    golds: Mapping[str, str],
    users: Mapping[str, Iterable[str | _HasId]],
) -> dict[str, dict[str, float]]:
    """Official metrics per user; ``users`` maps a user to query ids or queries (e.g. ``dataset.users()``)."""
    spec = _spec(task, golds)
    rows = per_query_scores(spec, preds, golds)
    result: dict[str, dict[str, float]] = {}
    for user, members in users.items():
        ids = [m if isinstance(m, str) else m.id for m in members]
        result[user] = aggregate(spec, [rows[i] for i in ids])
    return result


def write_predictions(path: str | Path, task: str | TaskSpec, preds: Mapping[str, str]) -> Path:
    """Write predictions in the official golds format, atomically (temporary file + ``os.replace``).

    ``task`` is written as given when a string; a ``TaskSpec`` writes its official name.
    """
    target = Path(path)
    name = task.official_name if isinstance(task, TaskSpec) else task
    payload: dict[str, Any] = {"task": name, "golds": [{"id": k, "output": v} for k, v in preds.items()]}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
