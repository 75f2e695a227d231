"""Strength calibration on held-out history (tiny model)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from chameleon_llm import calibration
from chameleon_llm.calibration import calibrate_alpha, heldout_answer_scores, heldout_loglik
from chameleon_llm.config import LATER_OPTIONS, FitConfig
from chameleon_llm.directions import Directions
from chameleon_llm.edit import UserEdit
from chameleon_llm.evaluation.prompting import score_labels
from chameleon_llm.fit import band_edits, calibrate_edit
from chameleon_llm.history import HistoryItem
from chameleon_llm.labels import LabelRule, history_labels
from chameleon_llm.models import LoadedModel, chat_prompt

ITEMS = [
    HistoryItem("what should I cook tonight?", "a vegetable curry."),
    HistoryItem("please write a short review of the new phone.", "I love the phone."),
    HistoryItem("", "The meeting moved to Thursday."),
]


def test_zero_strength_equals_no_edit(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    edit = make_edit(llama, mode="add", alpha=0.0, beta=0.0)
    assert heldout_loglik(llama, edit, ITEMS) == pytest.approx(heldout_loglik(llama, None, ITEMS), abs=1e-6)


def test_calibration_picks_the_best_scored_alpha(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    base = make_edit(llama, mode="add", alpha=1.0, beta=0.0)
    edit = replace(base, gap=torch.full_like(base.gaps, 3.0))  # a non-zero class-mean gap
    cal = calibrate_alpha(llama, edit, ITEMS, grid=[0.5, 2.0, 8.0])
    assert set(cal.scores) == {("last", a, 0.0) for a in (0.0, 0.5, 2.0, 8.0)}
    assert cal.scores[(cal.positions, cal.alpha, cal.beta)] == max(cal.scores.values())
    assert cal.baseline == pytest.approx(cal.scores[("last", 0.0, 0.0)], abs=1e-6)
    assert cal.n_items == len(ITEMS)
    # the scores are real measurements: strengths change the held-out likelihood
    assert len({round(v, 6) for v in cal.scores.values()}) > 1


def test_project_mode_scores_depend_on_alpha(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    edit = make_edit(llama, mode="project", alpha=0.0, beta=0.0)
    strong = edit.with_strengths(alpha=6.0)
    assert heldout_loglik(llama, strong, ITEMS) != pytest.approx(heldout_loglik(llama, edit, ITEMS), abs=1e-6)


def test_calibration_needs_items(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least one"):
        calibrate_alpha(llama, make_edit(llama), [], grid=[1.0])


def test_beta_grid_is_searched(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    edit = make_edit(llama, mode="add", alpha=0.0, beta=0.0)
    cal = calibrate_alpha(llama, edit, ITEMS, grid=[1.0], beta_grid=[0.0, 0.9])
    assert set(cal.scores) == {("last", a, b) for a in (0.0, 1.0) for b in (0.0, 0.9)}


def test_positions_grid_is_searched_and_scored_differently(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    base = make_edit(llama, mode="add", alpha=1.0, beta=0.0)
    edit = replace(base, gap=torch.full_like(base.gaps, 3.0))
    cal = calibrate_alpha(llama, edit, ITEMS, grid=[2.0], positions_grid=["all", "last"])
    # α = β = 0 is scored once (no edit: positions do not matter)
    assert set(cal.scores) == {("last", 0.0, 0.0), ("last", 2.0, 0.0), ("all", 2.0, 0.0)}
    assert cal.scores[("all", 2.0, 0.0)] != pytest.approx(cal.scores[("last", 2.0, 0.0)], abs=1e-6)
    assert cal.scores[(cal.positions, cal.alpha, cal.beta)] == max(cal.scores.values())
    assert cal.positions in {"all", "last"}


def test_positions_ties_keep_the_edits_own_positions(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    base = make_edit(llama, mode="add", alpha=0.0, beta=0.0, positions="all")
    edit = replace(base, gap=torch.zeros_like(base.gaps))  # zero gap, β = 0: every candidate is a no-op
    cal = calibrate_alpha(llama, edit, ITEMS, grid=[1.0], positions_grid=["last"])
    assert (cal.positions, cal.alpha, cal.beta) == ("all", 0.0, 0.0)


def test_answer_prefix_and_end_of_turn_are_scored(llama: LoadedModel) -> None:
    from chameleon_llm.generation import continuation_logprobs
    from chameleon_llm.models import chat_prompt

    item = [HistoryItem("rate this wine", "4")]
    with_prefix = heldout_loglik(llama, None, item, answer_prefix="Score:")
    assert with_prefix != pytest.approx(heldout_loglik(llama, None, item), abs=1e-6)
    # the score is the per-token log-likelihood of " 4" + end-of-turn after "…assistant\nScore:"
    end = llama.tokenizer.eos_token or ""
    cont = " 4" + end
    lp = continuation_logprobs(
        llama, [chat_prompt(llama, "rate this wine", assistant_prefix="Score:")], [cont], None
    )
    n = len(llama.tokenizer(cont, add_special_tokens=False)["input_ids"])
    assert with_prefix == pytest.approx(lp[0] / n, abs=1e-5)


LABELED = [
    HistoryItem("Rate this wine: crisp and bright.", "4"),
    HistoryItem("Rate this wine: flat and dull.", "2"),
    HistoryItem("Rate this wine: a fine red.", "4"),
]


def test_history_labels_only_for_label_like_answers() -> None:
    assert history_labels(LABELED) == ("4", "2")
    assert history_labels(ITEMS) == ()  # every answer distinct: titles, not labels
    long = [HistoryItem("q", "x" * 80), HistoryItem("q", "x" * 80), HistoryItem("q", "y")]
    assert history_labels(long) == ()


@pytest.mark.parametrize("rule", ["argmax", "median"])  # on this model they answer 1 vs 3
def test_answer_scores_match_label_scoring(llama: LoadedModel, make_edit, rule: LabelRule) -> None:  # type: ignore[no-untyped-def]
    labels = ["1", "2", "3", "4", "5"]
    edit = make_edit(llama, mode="add", alpha=3.0, positions="all")
    for candidate in (None, edit):
        ((score, loglik),) = heldout_answer_scores(
            llama, [candidate], LABELED, labels, answer_prefix="Score:", rule=rule
        )
        prompts = [chat_prompt(llama, it.input, assistant_prefix="Score:") for it in LABELED]
        chosen = score_labels(llama, prompts, labels, candidate, prefixed=True, rule=rule)
        expected = -sum(abs(int(c) - int(it.output)) for c, it in zip(chosen, LABELED, strict=True)) / 3
        assert score == pytest.approx(expected)
        assert loglik < 0


def test_answers_objective_ranks_by_task_score_then_loglik(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    base = make_edit(llama, mode="add", alpha=1.0, beta=0.0)
    edit = replace(base, gap=torch.full_like(base.gaps, 3.0))
    labels = ["1", "2", "3", "4", "5"]
    for guard in (False, True):
        cal = calibrate_alpha(
            llama, edit, LABELED, grid=[0.5, 4.0, 16.0], labels=labels, answer_prefix="Score:", guard=guard
        )
        assert cal.objective == "answers" and cal.answer_scores is not None
        assert set(cal.answer_scores) == set(cal.scores)
        assert cal.answer_baseline == pytest.approx(cal.answer_scores[("last", 0.0, 0.0)])
        assert all(v <= 0 for v in cal.answer_scores.values())  # minus MAE: numeric labels
        # the guard keeps only edits that leave the user's answers at least as likely as no edit
        kept = [
            k for k in cal.scores if not guard or k[1:] == (0.0, 0.0) or cal.scores[k] >= cal.baseline - 1e-5
        ]
        best = (cal.positions, cal.alpha, cal.beta)
        assert best in kept
        top = max(cal.answer_scores[k] for k in kept)
        assert cal.answer_scores[best] == pytest.approx(top)
        tied = [k for k in kept if round(cal.answer_scores[k], 6) == round(top, 6)]
        assert cal.scores[best] == pytest.approx(max(cal.scores[k] for k in tied), abs=1e-5)


def test_guard_excludes_an_edit_that_makes_answers_less_likely(
    llama: LoadedModel,
    make_edit,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    edit = make_edit(llama, mode="add", alpha=1.0, beta=0.0)

    def scored(_lm, candidates, *_a, **_k):  # type: ignore[no-untyped-def]
        # (task score, log-likelihood): no edit; α = 1 answers best but is less likely; α = 0.5 between
        by_alpha = {None: (-1.0, -5.0), 0.0: (-1.0, -5.0), 1.0: (-0.2, -6.0), 0.5: (-0.5, -4.0)}
        return [by_alpha[None if c is None else c.alpha] for c in candidates]

    monkeypatch.setattr(calibration, "heldout_answer_scores", scored)
    labels = ["1", "2"]
    cal = calibrate_alpha(llama, edit, LABELED, grid=[0.5, 1.0], beta_grid=[0.0], labels=labels)
    assert cal.alpha == 0.5  # α = 1 is out: it makes the user's answers less likely than no edit
    loose = calibrate_alpha(
        llama, edit, LABELED, grid=[0.5, 1.0], beta_grid=[0.0], labels=labels, guard=False
    )
    assert loose.alpha == 1.0


# --------------------------------------------------------------------------- layers chosen by calibration


def _directions(lm: LoadedModel, seed: int = 0, gap: float = 3.0) -> Directions:
    gen = torch.Generator().manual_seed(seed)
    n, d = lm.num_layers, lm.hidden_size
    personal = torch.randn(n, 1, d, generator=gen)
    neutral = torch.randn(n, d, generator=gen)
    return Directions(
        personal=personal / personal.norm(dim=-1, keepdim=True),
        neutral=neutral / neutral.norm(dim=-1, keepdim=True),
        gap=torch.full((n, 1), gap),
        ccs_loss=torch.zeros(n),
        stats={},
    )


def test_band_edits_take_each_bands_directions_and_skip_repeats(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    dirs = _directions(llama)
    n = llama.num_layers
    own = make_edit(llama, layers=(0,), rank=1, mode="add")
    others = band_edits(own, dirs, [(0.0, 0.01), (0.99, 1.0), (0.99, 1.0)])
    assert [e.layers for e in others] == [(n - 1,)]  # (0.0, 0.01) is the edit's own layer; repeats go
    moved = others[0]
    assert torch.equal(moved.personal, dirs.personal[[n - 1]])
    assert torch.equal(moved.neutral, dirs.neutral[[n - 1]])
    assert torch.equal(moved.gaps, dirs.gap[[n - 1]])
    assert moved.strengths == own.strengths


def _calibrated(lm: LoadedModel, edit: UserEdit, dirs: Directions, **edit_cfg: object) -> UserEdit:
    cfg = FitConfig.from_overrides({f"edit.{k}": v for k, v in edit_cfg.items()})
    history = [HistoryItem(it.input or "say something", it.output) for it in ITEMS]
    return calibrate_edit(lm, edit, history, [], cfg, {}, None, dirs)


def test_calibration_moves_the_edit_to_the_best_calibrated_layers(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    dirs = _directions(llama, seed=3)
    last = make_edit(llama, layers=(llama.num_layers - 1,), rank=1, mode="add")
    own = band_edits(last, dirs, [(0.0, 0.01)])[0]
    alt = band_edits(own, dirs, [(0.99, 1.0)])
    grid = {"alpha_grid": [1.0, 4.0], "beta_grid": [0.0], "positions_grid": []}
    chosen = _calibrated(llama, own, dirs, band_grid=[[0.99, 1.0]], **grid)
    history = [HistoryItem(it.input or "say something", it.output) for it in ITEMS]
    ranks = [calibrate_alpha(llama, e, history, [1.0, 4.0], [0.0]).rank for e in (own, *alt)]
    assert ranks[0] != ranks[1]  # a real choice: the layers calibrate differently
    winner = (own, *alt)[max(range(2), key=lambda i: (ranks[i], -i))]
    assert chosen.layers == winner.layers
    record = chosen.stats["calibration"]
    assert record["layers"] == list(winner.layers)
    assert set(record["by_layers"]) == {"0", str(llama.num_layers - 1)}
    # without a band grid the layers stay as they are
    assert _calibrated(llama, own, dirs, **grid).stats["calibration"].get("by_layers") is None


def test_layer_ties_keep_the_edits_own_layers(llama: LoadedModel, make_edit) -> None:  # type: ignore[no-untyped-def]
    dirs = _directions(llama, gap=0.0)  # zero gaps and β = 0: every candidate is a no-op
    own = band_edits(make_edit(llama, layers=(1,), rank=1, mode="add"), dirs, [(0.0, 0.01)])[0]
    grid = {"alpha_grid": [1.0], "beta_grid": [0.0], "positions_grid": []}
    chosen = _calibrated(llama, own, dirs, band_grid=[[0.4, 0.6]], **grid)
    assert set(chosen.stats["calibration"]["by_layers"]) == {"0", "1"}
    assert chosen.layers == (0,)
    assert chosen.strengths.alpha == 0.0


def test_band_grid_is_validated_and_left_out_of_the_key_when_unset() -> None:
    assert "band_grid" not in FitConfig().to_json()  # keys of earlier configurations stay valid
    cfg = FitConfig.from_overrides({"edit.band_grid": [[0.5, 0.6]]})
    assert cfg.edit.band_grid == ((0.5, 0.6),)
    assert '"band_grid": [[0.5, 0.6]]' in cfg.to_json()
    assert FitConfig.model_validate_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="band_grid"):
        FitConfig.from_overrides({"edit.band_grid": [[0.6, 0.5]]})


def test_later_options_change_keys_only_when_set() -> None:
    default = FitConfig()
    for option, value in [
        ("pairs.neutral", "labels"),
        ("pairs.label_negatives", 3),
        ("pairs.labels", ["a", "b"]),
    ]:
        cfg = FitConfig.from_overrides({option: value})
        assert cfg.generation_key() != default.generation_key()  # pairs change: a new pair cache entry
        assert cfg.to_json() != default.to_json()
        assert FitConfig.model_validate_json(cfg.to_json()) == cfg
    legacy = FitConfig.from_overrides(
        {
            f"{section}.{name}": value
            for section, options in LATER_OPTIONS.items()
            for name, value in options.items()
        }
    )
    for section, names in LATER_OPTIONS.items():  # at the earlier behaviour's values: left out of keys
        assert all(f'"{name}"' not in json.dumps(legacy.keyed()[section]) for name in names)
    # a default that changes behaviour (calibration_reserve, session 9) is in the keys
    assert default.keyed()["selection"]["calibration_reserve"] == 4


@pytest.mark.parametrize(
    ("n_items", "k", "n_queries"),
    [(4, 2, 2), (8, 4, 4), (10, 6, 6), (11, 7, 7), (12, 8, 8), (60, 8, 8)],
)
def test_calibration_reserve_leaves_short_histories_items_to_calibrate_on(
    n_items: int, k: int, n_queries: int
) -> None:
    cfg = FitConfig.from_overrides({"selection.calibration_reserve": 4}).for_history(n_items)
    assert (cfg.selection.k, cfg.pairs.n_queries, cfg.selection.calibration_reserve) == (k, n_queries, 0)
    assert n_items - cfg.selection.k >= min(4, n_items // 2)  # what calibration gets
    if k == 8:  # a long history is fitted exactly as without the option: same pair cache and keys
        assert cfg.to_json() == FitConfig.from_overrides({"selection.calibration_reserve": 0}).to_json()


def test_calibration_reserve_is_on_by_default_and_off_without_calibration() -> None:
    assert FitConfig().for_history(8).selection.k == 4
    off = FitConfig.from_overrides({"selection.calibration_reserve": 0})
    assert off.for_history(8) == off
    no_cal = FitConfig.from_overrides({"selection.calibration_reserve": 4, "edit.calibrate": False})
    assert no_cal.for_history(8).selection.k == 8
    assert off.to_json() != FitConfig().to_json()


def test_fit_user_builds_pairs_with_the_configuration_resolved_for_the_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chameleon_llm import fit as fit_module
    from chameleon_llm.history import HistoryItem

    seen: list[FitConfig] = []

    def stop(lm: object, history: object, cfg: FitConfig, *args: object, **kwargs: object) -> None:
        seen.append(cfg)
        raise RuntimeError("stop")

    monkeypatch.setattr(fit_module, "build_pairs", stop)
    history = [HistoryItem(f"q{i}", f"a{i}") for i in range(8)]
    cfg = FitConfig.from_overrides({"selection.calibration_reserve": 4})
    with pytest.raises(RuntimeError, match="stop"):
        fit_module.fit_user(object(), history, cfg, embedder=object(), cache=False)  # type: ignore[arg-type]
    assert seen[0].selection.k == 4
