"""Typed configuration, one object per pipeline stage, recorded in every artifact.

Every detail the paper leaves open (pair source, counts, estimators, layers, strengths, positions,
hook point) is an option here, with the default chosen by measurement (see docs/design.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HookPoint = Literal["mlp", "layer"]
Position = Literal["last", "all", "generated"]
PairSource = Literal["synthetic", "history", "mixed", "context"]
PersonalEstimator = Literal["svd", "svd-centered", "svd-diff", "mean-diff"]
NeutralEstimator = Literal["ccs", "mean-diff"]
LayerRule = Literal["ccs-loss", "band", "validation"]
EditMode = Literal["project", "add"]
CalibrationObjective = Literal["loglik", "answers"]


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SelectionConfig(_Stage):
    """Which history items feed the insights and pairs (PCA over sentence embeddings)."""

    k: int = Field(8, ge=1, description="number of representative history items")
    max_item_chars: int = Field(2000, ge=50, description="items longer than this are truncated (warned)")
    calibration_reserve: int = Field(
        4,
        ge=0,
        description="with calibration on, history items the selection leaves out for calibration (at most "
        "half the history): a short history gets fewer pairs instead of an uncalibrated edit. 0: k items "
        "whatever the history's length (a history of k items or fewer is then not calibrated; the "
        "default before session 9)",
    )


class InsightConfig(_Stage):
    """How the model writes the personalized and neutral insights."""

    prompt_version: str = Field("v1", description="prompt template version (files in chameleon_llm/prompts)")
    max_new_tokens: int = Field(96, ge=8, description="tokens per insight")
    items_in_prompt: int = Field(
        6, ge=1, description="selected items shown to the model when it writes insights"
    )


class PairConfig(_Stage):
    """How personalized/neutral response pairs are made."""

    source: PairSource = Field(
        "history",
        description="synthetic (paper) | history (real outputs) | mixed (both) | context (the query "
        "with vs without the user's other history items in the prompt, read where the answer starts)",
    )
    n_queries: int = Field(8, ge=1, description="history queries used to build pairs")
    max_new_tokens: int = Field(48, ge=4, description="tokens per generated response")
    min_cosine_distance: float = Field(
        0.02, ge=0.0, le=1.0, description="drop pairs whose responses are this close (1 - cosine)"
    )
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    one_line: bool = Field(
        True,
        description="cut generated responses at their first line break when the user's own answer "
        "is one line (labels, scores, titles), so pairs contrast answers, not rambling",
    )
    neutral: Literal["model", "labels"] = Field(
        "model",
        description="neutral side of history pairs: model (the model's own answer, written with the "
        "neutral insight) | labels (other answers of the label set, drawn uniformly: what a user "
        "without a preference would answer; no generation; needs a label set, else model)",
    )
    labels: tuple[str, ...] = Field(
        (),
        description="neutral=labels: the answer set (the harness passes its task's labels); empty: the "
        "distinct answers in the user's history when they look like labels",
    )
    label_negatives: int = Field(
        2, ge=1, description="neutral=labels: other labels drawn per query, a pair each"
    )
    context_items: int = Field(6, ge=1, description="context source: history items shown per query")
    context_chars: int = Field(200, ge=20, description="context source: characters kept per shown text")
    answer_prefix: str = Field(
        "",
        description="text opening the assistant turn before every response (e.g. 'Score:'); the "
        "harness sets its task's answer prefix so the edit is fitted in the context it answers in",
    )


class ActivationConfig(_Stage):
    """Where hidden states are read from."""

    hook_point: HookPoint = Field(
        "layer", description="mlp: MLP output | layer: decoder-layer output (residual)"
    )
    token: Literal["last", "response-mean"] = Field(
        "response-mean", description="read the last token, or average over the response's tokens"
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    max_length: int = Field(384, ge=16, description="tokens per (prompt+response) sequence")


class DirectionConfig(_Stage):
    """Estimators and the layer selector."""

    personal: PersonalEstimator = Field(
        "mean-diff", description="svd (uncentred) | svd-centered | svd-diff | mean-diff"
    )
    neutral: NeutralEstimator = Field("ccs", description="ccs (Burns et al.) | mean-diff")
    rank: int = Field(1, ge=1, description="personalized subspace rank")
    layer_rule: LayerRule = Field(
        "band", description="band | ccs-loss (lowest loss) | validation (held-out pairs)"
    )
    n_layers: int = Field(4, ge=1, description="layers kept by the ccs-loss or validation rule")
    band: tuple[float, float] = Field((0.3, 0.4), description="fraction of depth for the band rule")
    ccs_restarts: int = Field(5, ge=1, description="CCS random restarts (best loss kept)")
    ccs_epochs: int = Field(300, ge=10, description="CCS full-batch optimizer steps")
    ccs_lr: float = Field(1e-2, gt=0, description="CCS learning rate (AdamW)")
    ccs_weight_decay: float = Field(1e-2, ge=0, description="CCS weight decay")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="pairs held out by the validation rule")

    @model_validator(mode="after")
    def _band_ok(self) -> DirectionConfig:
        lo, hi = self.band
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"band must satisfy 0 <= low < high <= 1, got {self.band}")
        return self


class EditConfig(_Stage):
    """Strengths and positions of the inference-time edit."""

    mode: EditMode = Field(
        "add",
        description="project: x + α·proj(x, θP) − β·proj(x, θN) (the paper); "
        "add: x + α·gap·θP − β·proj(x, θN), gap = class-mean distance along θP",
    )
    alpha: float = Field(0.5, description="personalized strength α")
    beta: float = Field(0.0, description="neutral removal strength β (remove β·proj(x, θN))")
    max_edit_ratio: float | None = Field(
        None, gt=0, description="bound ‖Δx‖ ≤ ratio·‖x‖ per position (None: unbounded)"
    )
    positions: Position = Field("last", description="last (prompt end + generated) | all | generated")
    calibrate: bool = Field(
        True, description="choose α per user from alpha_grid by held-out history log-likelihood"
    )
    alpha_grid: tuple[float, ...] = Field(
        (0.1, 0.25, 0.5, 1.0, 2.0), description="α candidates (0 is always tried)"
    )
    beta_grid: tuple[float, ...] = Field((0.0, 0.5), description="β candidates tried with each α")
    positions_grid: tuple[Position, ...] = Field(
        ("all",), description="other positions calibration may choose (empty: only `positions`)"
    )
    band_grid: tuple[tuple[float, float], ...] = Field(
        (),
        description="other depth bands (fractions of depth, as directions.band) calibration may move "
        "the edit to, scored on the same held-out items (empty: the layers directions.layer_rule chose)",
    )
    calibration_items: int = Field(8, ge=1, description="held-out history items (not used for pairs)")
    calibration_objective: CalibrationObjective = Field(
        "loglik",
        description="loglik: held-out log-likelihood of the user's answers | answers: how well the "
        "edited model's first-ranked answer among calibration_labels matches the user's (accuracy, or "
        "minus the absolute error for numeric labels), log-likelihood breaking ties; without a label "
        "set (titles) it falls back to loglik",
    )
    calibration_guard: bool = Field(
        True,
        description="answers objective: exclude edits that make the user's held-out answers less likely "
        "than no edit (strong edits that wreck the text can still rank the right label first)",
    )
    calibration_label_rule: Literal["argmax", "median"] = Field(
        "argmax",
        description="answers objective: how the edited model's answer is read from the labels' "
        "likelihoods, as the harness answers (argmax: the likeliest label; median: the median of the "
        "distribution over numeric labels; the harness sets the rule it answers its task with)",
    )
    calibration_labels: tuple[str, ...] = Field(
        (),
        description="the answer set for the answers objective (the harness passes the task's labels); "
        "empty: the distinct answers in the user's history when they look like labels",
    )

    @model_validator(mode="after")
    def _bands_ok(self) -> EditConfig:
        for lo, hi in self.band_grid:
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"band_grid: every band must satisfy 0 <= low < high <= 1, got {(lo, hi)}")
        return self


# Options added after edits were first cached, with the value that does what the code did before
# they existed. ``FitConfig.keyed`` (the cache keys) leaves an option out at that value, so the keys of
# configurations that do not use it stay valid, and a new default that changes behaviour changes them.
LATER_OPTIONS: dict[str, dict[str, object]] = {
    "selection": {"calibration_reserve": 0},
    "pairs": {"neutral": "model", "labels": (), "label_negatives": 2},
    "edit": {"band_grid": (), "calibration_label_rule": "argmax"},
}


class FitConfig(_Stage):
    """The whole pipeline: history → UserEdit."""

    seed: int = Field(0, description="seed for sampling, PCA and CCS restarts")
    selection: SelectionConfig = SelectionConfig()
    insights: InsightConfig = InsightConfig()
    pairs: PairConfig = PairConfig()
    activations: ActivationConfig = ActivationConfig()
    directions: DirectionConfig = DirectionConfig()
    edit: EditConfig = EditConfig()

    @model_validator(mode="after")
    def _pairs_within_selection(self) -> FitConfig:
        if self.pairs.n_queries > self.selection.k:
            raise ValueError(
                f"pairs.n_queries ({self.pairs.n_queries}) exceeds selection.k ({self.selection.k}): pairs "
                "are built from the k selected history items, so only k pairs can be made. Fix: raise "
                f"selection.k to at least {self.pairs.n_queries}, or lower pairs.n_queries."
            )
        return self

    def keyed(self) -> dict[str, object]:
        """The configuration as keys are made from it: options in ``LATER_OPTIONS`` only when they are
        not at their earlier behaviour's value."""
        data = self.model_dump(mode="json")
        for section, legacy in LATER_OPTIONS.items():
            stage = getattr(self, section)
            for name, value in legacy.items():
                if getattr(stage, name) == value:
                    del data[section][name]
        return data

    def for_history(self, n_items: int) -> FitConfig:
        """The configuration a history of ``n_items`` is fitted with: ``selection.calibration_reserve``
        resolved into ``selection.k`` (and ``pairs.n_queries``), so keys depend only on what is run."""
        reserve = self.selection.calibration_reserve
        if not reserve:
            return self
        k = self.selection.k
        if self.edit.calibrate:
            k = min(k, max(2, n_items - min(reserve, n_items // 2)))
        selection = self.selection.model_copy(update={"k": k, "calibration_reserve": 0})
        pairs = self.pairs.model_copy(update={"n_queries": min(self.pairs.n_queries, k)})
        return self.model_copy(update={"selection": selection, "pairs": pairs})

    def to_json(self) -> str:
        """Canonical JSON of :meth:`keyed` (``model_validate_json`` restores the full configuration)."""
        return json.dumps(self.keyed(), sort_keys=True)

    def generation_key(self) -> str:
        """Hash of everything that changes generated texts (the pair cache key)."""
        data = self.keyed()
        parts = {"seed": self.seed, **{k: data[k] for k in ("selection", "insights", "pairs")}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def preset(cls, name: str) -> FitConfig:
        """A named configuration (see PRESETS), e.g. ``paper`` for the paper's described setting."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        return cls.from_overrides(PRESETS[name])

    @classmethod
    def from_overrides(cls, overrides: dict[str, object]) -> FitConfig:
        """Build from dotted overrides, e.g. ``{"edit.alpha": 1.0, "pairs.source": "history"}``."""
        data = cls().model_dump()
        for dotted, value in overrides.items():
            node = data
            *path, leaf = dotted.split(".")
            for key in path:
                if key not in node or not isinstance(node[key], dict):
                    raise ValueError(f"unknown option {dotted!r}: no section {key!r}")
                node = node[key]
            if leaf not in node:
                raise ValueError(f"unknown option {dotted!r}; valid: {', '.join(sorted(node))}")
            node[leaf] = value
        return cls.model_validate(data)


PRESETS: dict[str, dict[str, object]] = {
    # the package defaults (chosen by measurement, docs/design.md)
    "default": {},
    # the previous defaults (benchmarks/results/quality_last_only.json): edit from the prompt's last
    # token on only, α up to 1
    "last-only": {"edit.positions_grid": [], "edit.alpha_grid": [0.1, 0.25, 0.5, 1.0]},
    # the method as the paper describes it: synthetic pairs, uncentred SVD, CCS, CCS-loss layers,
    # projection edit with alpha = beta = 0.5 on MLP outputs at the last token
    "paper": {
        "pairs.source": "synthetic",
        "activations.hook_point": "mlp",
        "activations.token": "last",
        "directions.personal": "svd",
        "directions.neutral": "ccs",
        "directions.layer_rule": "ccs-loss",
        "edit.mode": "project",
        "edit.alpha": 0.5,
        "edit.beta": 0.5,
        "edit.calibrate": False,
        "directions.band": [0.3, 0.6],
    },
}
