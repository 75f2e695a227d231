"""LaMP evaluation harness: methods, prompts, a resumable runner, paired bootstrap, reports."""

from chameleon_llm.evaluation import dpo as dpo  # registers dpo, dpo-4x, dpo-16x, dpo-steps
from chameleon_llm.evaluation.methods import (
    METHODS,
    FitStore,
    Method,
    MethodContext,
    MethodUnavailable,
    UserState,
    create_method,
    register_method,
)
from chameleon_llm.evaluation.prompting import (
    EvalSettings,
    ResolvedSettings,
    answer_messages,
    choose_label,
    score_labels,
)
from chameleon_llm.evaluation.runner import EvalConfig, evaluate, fit_profile, prepare_run, run_methods
from chameleon_llm.evaluation.stats import bootstrap_samples, paired_bootstrap

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalSettings",
    "FitStore",
    "Method",
    "MethodContext",
    "MethodUnavailable",
    "ResolvedSettings",
    "UserState",
    "answer_messages",
    "bootstrap_samples",
    "choose_label",
    "create_method",
    "evaluate",
    "fit_profile",
    "paired_bootstrap",
    "prepare_run",
    "register_method",
    "run_methods",
    "score_labels",
]
