"""Tests of the official LaMP metrics, checked against values computed with the official evaluator.

``OFFICIAL_CASES`` and :func:`make_prediction_sets` are shared with
``tests/fixtures/lamp/make_cases.py``, which built the inputs of the official run recorded in
``tests/fixtures/lamp/official_expected.json`` (see ``HOW_COMPUTED.md`` there).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chameleon_llm.lamp import (
    LampDataset,
    TaskSpec,
    aggregate,
    get_task,
    load_lamp_files,
    load_outputs,
    per_query_scores,
    per_user_scores,
    score,
    write_predictions,
)
from chameleon_llm.lamp.metrics import bootstrap_rouge_mid, rating_value

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "lamp"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPECTED_FILE = FIXTURES / "official_expected.json"


@dataclass(frozen=True)
class OfficialCase:
    """One golds file scored by the official evaluator: where it lives and how the evaluator sees it."""

    name: str
    root: str  # "shared" (../shared/data) or "fixtures" (tests/fixtures/lamp)
    questions: str
    outputs: str
    labels: str | None = None
    evaluator: str = "head"  # "head" or "news" (the commit whose LaMP_2 labels are news categories)


OFFICIAL_CASES = (
    OfficialCase(
        "sample-LaMP_1-dev",
        "shared",
        "lamp-samples/LaMP_1_user_dev_questions_sample.json",
        "lamp-samples/LaMP_1_user_dev_outputs_sample.json",
    ),
    OfficialCase(
        "sample-LaMP_2news-dev",
        "shared",
        "lamp-samples/LaMP_2news_user_dev_questions_sample.json",
        "lamp-samples/LaMP_2news_user_dev_outputs_sample.json",
        evaluator="news",
    ),
    OfficialCase(
        "sample-LaMP_2news-train",
        "shared",
        "lamp-samples/LaMP_2news_user_train_questions_sample.json",
        "lamp-samples/LaMP_2news_user_train_outputs_sample.json",
        evaluator="news",
    ),
    OfficialCase(
        "bench-news-category",
        "shared",
        "bench/news-category/questions.json",
        "bench/news-category/outputs.json",
        labels="bench/news-category/labels.json",
    ),
    OfficialCase(
        "bench-wine-rating", "shared", "bench/wine-rating/questions.json", "bench/wine-rating/outputs.json"
    ),
    OfficialCase(
        "bench-news-headline",
        "shared",
        "bench/news-headline/questions.json",
        "bench/news-headline/outputs.json",
    ),
    OfficialCase(
        "bench-paper-title", "shared", "bench/paper-title/questions.json", "bench/paper-title/outputs.json"
    ),
    OfficialCase("fixture-LaMP_2M-dev", "fixtures", "lamp2m_dev_questions.json", "lamp2m_dev_outputs.json"),
    OfficialCase("fixture-LaMP_7-time", "fixtures", "lamp7_time/questions.json", "lamp7_time/outputs.json"),
)


def case_root(case: OfficialCase) -> Path:
    return SHARED if case.root == "shared" else FIXTURES


def load_case(case: OfficialCase) -> LampDataset:
    """Load a case's dataset; skip the test when the shared data folder is absent."""
    root = case_root(case)
    if not (root / case.questions).is_file():
        pytest.skip(f"{root / case.questions} is absent (the shared LaMP data lives in ../shared/data)")
    labels = root / case.labels if case.labels else None
    return load_lamp_files(root / case.questions, root / case.outputs, labels=labels)


def _perturb_label(gold: str, i: int, labels: tuple[str, ...]) -> str:
    step = i % 5
    if step == 1:
        return f"  {gold}\n"  # whitespace: correct after strip
    if step == 2:
        return labels[(labels.index(gold) + 1) % len(labels)] if gold in labels else labels[0]
    if step == 3:
        return "not-a-label"  # unknown -> index -1
    if step == 4:
        return gold.upper()  # case matters (unknown unless unchanged, e.g. "[1]")
    return gold


def _perturb_rating(gold: str, i: int) -> str:
    value = int(float(gold))
    return [gold, str(value + 1 if value < 5 else 4), "", "four", f" {value}.0 ", "2.5"][i % 6]


def _perturb_text(gold: str, i: int) -> str:
    words = gold.split()
    step = i % 5
    if step == 1:
        return gold.lower()
    if step == 2:
        return " ".join(words[: max(1, len(words) // 2)])
    if step == 3:
        return " ".join(reversed(words))
    if step == 4:
        return "completely unrelated words here " + words[-1]
    return gold


def make_prediction_sets(spec: TaskSpec, golds: dict[str, str]) -> dict[str, dict[str, str]]:
    """Deterministic prediction sets built from the golds (ids in sorted order drive the perturbation)."""
    ids = sorted(golds)
    if spec.kind == "classification":
        perturbed = {q: _perturb_label(golds[q], i, spec.labels) for i, q in enumerate(ids)}
        constant = {q: spec.labels[0] for q in ids}
        unknown = {q: "???" for q in ids}
        return {"exact": dict(golds), "perturbed": perturbed, "constant": constant, "unknown": unknown}
    if spec.kind == "rating":
        perturbed = {q: _perturb_rating(golds[q], i) for i, q in enumerate(ids)}
        return {
            "exact": dict(golds),
            "perturbed": perturbed,
            "constant": {q: "3" for q in ids},
            "unparsable": {q: "n/a" for q in ids},
        }
    perturbed = {q: _perturb_text(golds[q], i) for i, q in enumerate(ids)}
    return {
        "exact": dict(golds),
        "perturbed": perturbed,
        "constant": {q: "The" for q in ids},
        "empty": {q: "" for q in ids},
    }


# --------------------------------------------------------------------------- official values


def _expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    return data["cases"]


def test_expected_file_covers_every_case() -> None:
    cases = _expected()
    assert sorted(cases) == sorted(c.name for c in OFFICIAL_CASES)
    for name, entry in cases.items():
        assert entry["n"] > 0, name
        assert set(entry["sets"]) >= {"exact", "perturbed"}, name


@pytest.mark.parametrize("case", OFFICIAL_CASES, ids=lambda c: c.name)
def test_matches_official_evaluator(case: OfficialCase) -> None:
    dataset = load_case(case)
    assert dataset.golds is not None
    entry = _expected()[case.name]
    assert entry["task"] == dataset.task.name
    assert entry["n"] == len(dataset.golds)
    sets = make_prediction_sets(dataset.task, dataset.golds)
    assert sorted(sets) == sorted(entry["sets"])
    for set_name, preds in sets.items():
        expected = entry["sets"][set_name]
        got = score(dataset.task, preds, dataset.golds)
        if dataset.task.kind == "generation":
            assert got == pytest.approx(expected["official_rouge_mean"], rel=1e-12, abs=1e-12), set_name
            # The official bootstrap median, replayed with the same seed and the same id order.
            order = sorted(dataset.golds)
            ordered = {order[i]: dataset.golds[order[i]] for i in entry["official_id_order"]}
            seeded = score(dataset.task, preds, ordered, rouge_bootstrap_seed=entry["numpy_seed"])
            assert seeded == pytest.approx(expected["official"], rel=1e-12, abs=1e-12), set_name
        else:
            assert got == pytest.approx(expected["official"], rel=1e-12, abs=1e-12), set_name


def test_exact_predictions_are_perfect_on_fixture() -> None:
    dataset = load_case(OFFICIAL_CASES[-2])
    assert dataset.golds is not None
    assert score(dataset.task, dataset.golds, dataset.golds) == {"accuracy": 1.0, "f1": pytest.approx(6 / 15)}


# --------------------------------------------------------------------------- behaviour


def test_classification_unknown_labels_and_macro_f1() -> None:
    golds = {"a": "[1]", "b": "[2]", "c": "[1]"}
    preds = {"a": " [1] ", "b": "2", "c": "[2]"}
    # label [1]: tp=1 fp=0 fn=1 -> 2/3 ; label [2]: tp=0 fp=1 fn=1 -> 0 ; "2" is unknown (-1)
    assert score("LaMP_1", preds, golds) == {"accuracy": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}


def test_unknown_prediction_equals_unknown_gold_as_officially() -> None:
    spec = get_task("LaMP_2M")
    golds = {"a": "not a tag", "b": "comedy"}
    preds = {"a": "something else", "b": "comedy"}
    rows = per_query_scores(spec, preds, golds)
    assert rows["a"] == {"accuracy": 1.0, "pred_index": -1.0, "gold_index": -1.0}
    assert score(spec, preds, golds)["accuracy"] == 1.0


def test_labels_override_changes_the_label_space() -> None:
    spec = get_task("LaMP_2N").with_labels(["weird news", "politics"])
    golds = {"a": "weird news", "b": "politics"}
    assert score(spec, golds, golds) == {"accuracy": 1.0, "f1": 1.0}
    assert score("LaMP_2N", golds, golds)["accuracy"] == 1.0  # both unknown -> -1 == -1
    assert score("LaMP_2N", golds, golds)["f1"] == pytest.approx(1 / 15)  # only politics scores


def test_rating_fallback_is_farther_of_1_and_5() -> None:
    assert rating_value("oops", 1.0) == 5.0
    assert rating_value("oops", 2.0) == 5.0
    assert rating_value("oops", 3.0) == 5.0  # tie goes to 5, as in the official code
    assert rating_value("oops", 4.0) == 1.0
    assert rating_value(" 2.5 ", 4.0) == 2.5
    result = score("LaMP_3", {"a": "x", "b": "4"}, {"a": "4", "b": "2"})
    assert result == {"MAE": pytest.approx(2.5), "RMSE": pytest.approx(math.sqrt((9 + 4) / 2))}


def test_rating_gold_must_be_numeric() -> None:
    with pytest.raises(ValueError, match="gold rating of id 'a'"):
        score("LaMP_3", {"a": "3"}, {"a": "great"})


def test_rouge_has_no_stemming_and_ignores_case_and_punctuation() -> None:
    rows = per_query_scores(
        "LaMP_4", {"a": "Running dogs!", "b": "RUN, DOG"}, {"a": "run dog", "b": "run dog"}
    )
    assert rows["a"] == {"rouge-1": 0.0, "rouge-L": 0.0}  # no stemmer: running != run
    assert rows["b"] == {"rouge-1": 1.0, "rouge-L": 1.0}


def test_rouge_l_uses_word_order() -> None:
    rows = per_query_scores("LaMP_5", {"a": "c b a"}, {"a": "a b c"})
    assert rows["a"]["rouge-1"] == 1.0
    assert rows["a"]["rouge-L"] == pytest.approx(1 / 3)


def test_ids_must_match() -> None:
    with pytest.raises(ValueError, match=r"1 gold ids have no prediction \(e.g. \['b'\]\)"):
        score("LaMP_4", {"a": "x"}, {"a": "x", "b": "y"})
    with pytest.raises(ValueError, match="1 predictions have no gold"):
        score("LaMP_4", {"a": "x", "z": "y"}, {"a": "x"})


def test_ambiguous_lamp2_is_resolved_from_golds() -> None:
    assert score("LaMP_2", {"a": "comedy"}, {"a": "comedy"})["f1"] == pytest.approx(1 / 15)
    with pytest.raises(ValueError, match="ambiguous"):
        score("LaMP_2", {"a": "zzz"}, {"a": "zzz"})


def test_aggregate_of_subsets_matches_score_of_subsets() -> None:
    spec = get_task("LaMP_3")
    golds = {str(i): str(1 + i % 5) for i in range(10)}
    preds = {str(i): ["1", "5", "x", "3"][i % 4] for i in range(10)}
    rows = per_query_scores(spec, preds, golds)
    subset = ["1", "2", "7"]
    assert aggregate(spec, [rows[i] for i in subset]) == pytest.approx(
        score(spec, {i: preds[i] for i in subset}, {i: golds[i] for i in subset})
    )
    users = {"u1": subset, "u2": ["0", "9"]}
    per_user = per_user_scores(spec, preds, golds, users)
    assert per_user["u2"] == pytest.approx(
        score(spec, {i: preds[i] for i in users["u2"]}, {i: golds[i] for i in "09"})
    )


def test_bootstrap_mid_is_close_to_the_mean() -> None:
    values = {"rouge-1": [0.0, 0.5, 1.0, 0.25] * 10, "rouge-L": [0.1, 0.2, 0.3, 0.9] * 10}
    mid = bootstrap_rouge_mid(values, seed=0)
    assert mid == bootstrap_rouge_mid(values, seed=0)
    assert mid["rouge-1"] == pytest.approx(0.4375, abs=0.03)
    assert mid["rouge-L"] == pytest.approx(0.375, abs=0.03)


def test_write_predictions_roundtrip_and_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out" / "preds.json"
    preds = {"2": "Ünïcode headline", "1": "b"}
    assert write_predictions(target, get_task("LaMP_2M"), preds) == target
    task_field, loaded = load_outputs(target)
    assert task_field == "LaMP_2"
    assert loaded == preds and list(loaded) == ["2", "1"]
    write_predictions(target, "LaMP_4", {"1": "x"})
    assert json.loads(target.read_text(encoding="utf-8")) == {
        "task": "LaMP_4",
        "golds": [{"id": "1", "output": "x"}],
    }
    assert sorted(p.name for p in target.parent.iterdir()) == ["preds.json"]  # no temporary left over
