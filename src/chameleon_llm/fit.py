"""The pipeline: history → selection → insights → pairs → activations → directions → UserEdit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .activations import collect_last_token
from .calibration import Calibration, calibrate_alpha
from .config import FitConfig
from .directions import Directions, band_layers, estimate, select_layers
from .edit import UserEdit
from .embeddings import Embedder, get_embedder
from .history import HistoryItem, history_fingerprint
from .insights import Insights, write_insights
from .labels import history_labels
from .models import LoadedModel, cache_dir, chat_prompt
from .pairs import (
    Pair,
    filter_pairs,
    load_pairs,
    make_pairs,
    needs_insights,
    response_text,
    save_pairs,
)
from .provenance import provenance
from .selection import select_representative

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class FitError(RuntimeError):
    """Fitting could not produce a usable edit; the message says why and what to change."""


@dataclass
class FitResult:
    edit: UserEdit
    pairs: list[Pair]
    insights: Insights
    selected: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    directions: Directions | None = None


@contextmanager
def _timed(timings: dict[str, float], stage: str, progress: Progress | None) -> Iterator[None]:
    if progress:
        progress(stage)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


def pair_texts(
    lm: LoadedModel, pairs: Sequence[Pair], answer_prefix: str = ""
) -> tuple[list[str], list[str]]:
    """The texts whose states are contrasted: the query's chat prompt plus each response (after the
    answer prefix, when there is one)."""
    pos, neg = [], []
    for p in pairs:
        if p.source == "context":  # the prompts differ; both end where the answer starts
            pos.append(chat_prompt(lm, f"{p.personal}\n\n{p.query}") + answer_prefix)
            neg.append(chat_prompt(lm, p.query) + answer_prefix)
        else:
            pos.append(chat_prompt(lm, p.query) + response_text(answer_prefix, p.personal))
            neg.append(chat_prompt(lm, p.query) + response_text(answer_prefix, p.neutral))
    return pos, neg


def _n_tokens(lm: LoadedModel, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_tokens(lm: LoadedModel, pair: Pair, response: str, prefix: str) -> int:
    """Tokens averaged for "response-mean": the response's own (context pairs: the last token)."""
    if pair.source == "context":
        return 1
    return _n_tokens(lm, " " + response if prefix else response)


def _pair_cache_path(lm: LoadedModel, history: Sequence[HistoryItem], cfg: FitConfig, root: Path) -> Path:
    key = f"{lm.config_hash}-{history_fingerprint(history)}-{cfg.generation_key()}"
    return root / "pairs" / f"{key}.json"


def build_pairs(
    lm: LoadedModel,
    history: Sequence[HistoryItem],
    cfg: FitConfig,
    embedder: Embedder,
    timings: dict[str, float],
    progress: Progress | None = None,
    cache: Path | None = None,
) -> tuple[list[Pair], Insights, list[int]]:
    """Selection, insights and pairs (the text stages), cached per user and generation config."""
    with _timed(timings, "select", progress):
        emb = embedder.encode([f"{it.input}\n{it.output}" for it in history])
        selected = select_representative(emb, cfg.selection.k, seed=cfg.seed)
        items = [history[i] for i in selected]
    cached = load_pairs(cache) if cache is not None else None
    if cached is not None:
        timings["insights"] = timings["pairs"] = 0.0
        return cached[0], cached[1], selected
    torch.manual_seed(cfg.seed)
    labels = pair_labels(history, cfg)
    with _timed(timings, "insights", progress):
        insights = (
            write_insights(lm, items, cfg.insights)
            if needs_insights(cfg.pairs, labels)
            else Insights("", "", personal_checked=False)  # no prompt uses them
        )
    with _timed(timings, "pairs", progress):
        raw = make_pairs(
            lm, items, insights, cfg.pairs, seed=cfg.seed, version=cfg.insights.prompt_version, labels=labels
        )
        pairs = filter_pairs(raw, embedder, cfg.pairs.min_cosine_distance)
    if cache is not None:
        save_pairs(cache, pairs, insights)
    return pairs, insights, selected


def pair_labels(history: Sequence[HistoryItem], cfg: FitConfig) -> tuple[str, ...]:
    """The answer set for label-neutral pairs: ``pairs.labels``, else the history's labels, else none."""
    if cfg.pairs.neutral != "labels":
        return ()
    return cfg.pairs.labels or history_labels(history)


def edit_from_pairs(
    lm: LoadedModel,
    pairs: Sequence[Pair],
    cfg: FitConfig,
    insights: Insights,
    timings: dict[str, float],
    progress: Progress | None = None,
    extra_stats: dict[str, object] | None = None,
) -> tuple[UserEdit, Directions]:
    """Activations → directions → layer selection → UserEdit."""
    if len(pairs) < 2:
        raise FitError(
            f"only {len(pairs)} usable pair(s) after filtering; at least 2 are needed. "
            "Add history items, raise selection.k and pairs.n_queries, or lower pairs.min_cosine_distance."
        )
    acfg = cfg.activations
    with _timed(timings, "activations", progress):
        prefix = cfg.pairs.answer_prefix
        pos_texts, neg_texts = pair_texts(lm, pairs, prefix)
        counts = None
        if acfg.token == "response-mean":  # the response's own tokens, without the shared prefix
            counts = [_response_tokens(lm, p, p.personal, prefix) for p in pairs] + [
                _response_tokens(lm, p, p.neutral, prefix) for p in pairs
            ]
        states = collect_last_token(
            lm,
            pos_texts + neg_texts,
            hook_point=acfg.hook_point,
            batch_size=acfg.batch_size,
            max_length=acfg.max_length,
            mean_last=counts,
        )
        pos, neg = states[: len(pairs)], states[len(pairs) :]
    with _timed(timings, "directions", progress):
        dirs = estimate(pos, neg, cfg.directions, seed=cfg.seed)
        layers = select_layers(pos, neg, cfg.directions, seed=cfg.seed, ccs_loss_per_layer=dirs.ccs_loss)
    stats: dict[str, object] = {
        "per_layer": dirs.stats,
        "n_pairs": len(pairs),
        "pair_sources": sorted({p.source for p in pairs}),
        "personal_insight_checked": insights.personal_checked,
    }
    stats.update(extra_stats or {})
    edit = UserEdit(
        layers=tuple(layers),
        personal=dirs.personal[layers].contiguous(),
        neutral=dirs.neutral[layers].contiguous(),
        gap=dirs.gap[layers].contiguous(),
        hook_point=acfg.hook_point,
        strengths=cfg.edit,
        model=lm.identity,
        insights={"personal": insights.personal, "neutral": insights.neutral},
        stats=stats,
        config=cfg.model_dump(mode="json"),
        provenance=provenance(timings=timings),
    )
    return edit, dirs


def calibrate_edit(
    lm: LoadedModel,
    edit: UserEdit,
    history: Sequence[HistoryItem],
    selected: Sequence[int],
    cfg: FitConfig,
    timings: dict[str, float],
    progress: Progress | None = None,
    directions: Directions | None = None,
) -> UserEdit:
    """Set (positions, α, β) by the calibration objective on history items not used for pairs; with
    ``edit.band_grid`` and the fit's ``directions`` the layers too: the edit moved to each band (see
    :func:`band_edits`) is calibrated on the same items and the best calibration wins (ties keep
    ``edit``'s layers)."""
    used = set(selected)
    heldout = [it for i, it in enumerate(history) if i not in used][: cfg.edit.calibration_items]
    if not heldout:
        stats = {**edit.stats, "calibration": "skipped: every history item was used for pairs"}
        return replace(edit, stats=stats)
    alternatives = band_edits(edit, directions, cfg.edit.band_grid) if directions is not None else []
    labels: tuple[str, ...] = ()
    if cfg.edit.calibration_objective == "answers":
        labels = cfg.edit.calibration_labels or history_labels(history)
    candidates = [edit, *alternatives]
    with _timed(timings, "calibrate", progress):
        cals = [
            calibrate_alpha(
                lm,
                cand,
                heldout,
                cfg.edit.alpha_grid,
                cfg.edit.beta_grid,
                positions_grid=cfg.edit.positions_grid,
                answer_prefix=cfg.pairs.answer_prefix,
                labels=labels,
                guard=cfg.edit.calibration_guard,
                label_rule=cfg.edit.calibration_label_rule,
            )
            for cand in candidates
        ]
    chosen = max(range(len(cals)), key=lambda i: (cals[i].rank, -i))
    edit, cal = candidates[chosen], cals[chosen]
    several = len({pos for pos, _, _ in cal.scores}) > 1

    def name(key: tuple[str, float, float]) -> str:
        pos, a, b = key
        return (f"{pos}:" if several else "") + f"{a},{b}"

    best = (cal.positions, cal.alpha, cal.beta)
    per = "loglik_per_token" if cal.objective == "loglik" else "loglik_per_answer"
    record: dict[str, object] = {
        "alpha": cal.alpha,
        "beta": cal.beta,
        **({"positions": cal.positions} if several else {}),
        "n_items": cal.n_items,
        "objective": cal.objective,
        "loglik_base": round(cal.baseline, 5),
        "loglik_best": round(cal.scores[best], 5),
        per: {name(k): round(v, 5) for k, v in cal.scores.items()},
    }
    if alternatives:
        record["layers"] = list(edit.layers)
        record["by_layers"] = {
            _span(cand.layers): {"alpha": c.alpha, "beta": c.beta, "loglik": round(c.scores[_best(c)], 5)}
            | ({"answer_score": round(c.answer_scores[_best(c)], 5)} if c.answer_scores is not None else {})
            for cand, c in zip(candidates, cals, strict=True)
        }
    if cfg.edit.calibration_objective == "answers" and not labels:
        record["objective_note"] = "answers objective without a label set: fell back to loglik"
    if cal.answer_scores is not None and cal.answer_baseline is not None:
        record["answer_score_base"] = round(cal.answer_baseline, 5)
        record["answer_score_best"] = round(cal.answer_scores[best], 5)
        record["answer_score"] = {name(k): round(v, 5) for k, v in cal.answer_scores.items()}
    stats = {**edit.stats, "calibration": record}
    return replace(
        edit.with_strengths(alpha=cal.alpha, beta=cal.beta, positions=cal.positions),
        stats=stats,
        provenance={**edit.provenance, "timings": timings},
    )


def _best(cal: Calibration) -> tuple[str, float, float]:
    return (cal.positions, cal.alpha, cal.beta)


def _span(layers: Sequence[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def band_edits(edit: UserEdit, dirs: Directions, bands: Sequence[tuple[float, float]]) -> list[UserEdit]:
    """``edit`` moved to each band of depth (directions of those layers; bands giving ``edit``'s own
    layers, or layers already listed, are skipped)."""
    out: list[UserEdit] = []
    seen = {edit.layers}
    for band in bands:
        layers = band_layers(dirs.personal.shape[0], band)
        if tuple(layers) in seen:
            continue
        seen.add(tuple(layers))
        out.append(
            replace(
                edit,
                layers=tuple(layers),
                personal=dirs.personal[layers].contiguous(),
                neutral=dirs.neutral[layers].contiguous(),
                gap=dirs.gap[layers].contiguous(),
            )
        )
    return out


def fit_user(
    lm: LoadedModel,
    history: Sequence[HistoryItem],
    config: FitConfig | None = None,
    *,
    embedder: Embedder | None = None,
    cache: bool | Path = True,
    progress: Progress | None = None,
) -> FitResult:
    """Turn one user's history into a UserEdit (no weights change).

    ``cache``: True caches generated pairs under the user cache dir, a Path puts them there, False
    disables it. A refit with other direction or edit settings reuses the cached texts.
    """
    if not history:
        raise FitError("the history is empty: give at least one item")
    cfg = (config or FitConfig()).for_history(len(history))
    emb = embedder or get_embedder()
    timings: dict[str, float] = {}
    root = cache if isinstance(cache, Path) else cache_dir()
    cache_path = _pair_cache_path(lm, history, cfg, root) if cache else None
    pairs, insights, selected = build_pairs(lm, history, cfg, emb, timings, progress, cache_path)
    edit, dirs = edit_from_pairs(lm, pairs, cfg, insights, timings, progress)
    if cfg.edit.calibrate:
        edit = calibrate_edit(lm, edit, history, selected, cfg, timings, progress, dirs)
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 4)
    return FitResult(
        edit=edit, pairs=pairs, insights=insights, selected=selected, timings=timings, directions=dirs
    )
