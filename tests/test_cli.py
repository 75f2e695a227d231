"""CLI behaviour that needs no model: option parsing and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chameleon_llm.cli import UsageError, app, build_config, read_history

runner = CliRunner()


def test_build_config_overrides_and_direct_options(tmp_path: Path) -> None:
    cfg = build_config(
        None,
        ["edit.alpha=1.5", "pairs.source=history", "directions.band=[0.2, 0.5]"],
        **{"edit.beta": 0.25, "seed": None},
    )
    assert cfg.edit.alpha == 1.5 and cfg.edit.beta == 0.25
    assert cfg.pairs.source == "history" and cfg.directions.band == (0.2, 0.5)
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"edit": {"alpha": 3.0}}))
    assert build_config(f, []).edit.alpha == 3.0
    assert build_config(f, ["edit.alpha=2"]).edit.alpha == 2.0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["edit.alpha"], "section.key=value"),
        (["edit.gamma=1"], "unknown option 'edit.gamma'"),
        (["pairs.source=telepathy"], "invalid fit options"),
        (["nosuch.key=1"], "no section 'nosuch'"),
        # pairs are built from the k selected items: more queries than k would be silently capped
        (["pairs.n_queries=16"], r"raise selection.k to at least 16"),
        (["selection.k=4"], r"pairs.n_queries \(8\) exceeds selection.k \(4\)"),
    ],
)
def test_build_config_errors(sets: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_config(None, sets)


def test_read_history_requires_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        read_history(None, None, None)
    with pytest.raises(UsageError, match="--user"):
        read_history(None, tmp_path / "q.json", None)


def test_lamp_history_adapter_reads_one_user() -> None:
    bench = (
        Path(__file__).resolve().parents[2] / "shared" / "data" / "bench" / "news-category" / "questions.json"
    )
    if not bench.is_file():
        pytest.skip("../shared/data not present")
    user = json.loads(bench.read_text())[0]["user_id"]
    items = read_history(None, bench, user)
    assert items and all(it.output for it in items)
    with pytest.raises(ValueError, match="not in"):
        read_history(None, bench, "no-such-user")


def test_inspect_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "none.safetensors")])
    assert result.exit_code != 0
    assert "edit file not found" in str(result.exception)


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("fit", "generate", "inspect", "demo", "score", "data"):
        assert cmd in result.output


def test_presets() -> None:
    paper = build_config(None, [], preset="paper")
    assert paper.pairs.source == "synthetic" and paper.edit.mode == "project"
    assert paper.directions.layer_rule == "ccs-loss" and paper.edit.alpha == 0.5
    assert build_config(None, ["edit.alpha=2"], preset="paper").edit.alpha == 2.0
    with pytest.raises(UsageError, match="unknown preset"):
        build_config(None, [], preset="nope")
