"""Chameleon: personalize an instruction-tuned LLM per user without fine-tuning.

Fake it (the model writes insights and synthetic personalized/neutral pairs), then align it (edit
hidden states along a personalized direction and away from a neutral one at inference).
"""

from .config import FitConfig
from .edit import EditFileError, UserEdit
from .fit import FitError, FitResult, fit_user
from .generation import GenerationOptions, continuation_logprobs, generate
from .history import HistoryError, HistoryItem, load_history, parse_history
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .steering import steer

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_MODEL",
    "EditFileError",
    "FitConfig",
    "FitError",
    "FitResult",
    "GenerationOptions",
    "HistoryError",
    "HistoryItem",
    "LoadedModel",
    "UserEdit",
    "__version__",
    "continuation_logprobs",
    "fit_user",
    "generate",
    "load_history",
    "load_model",
    "parse_history",
    "steer",
]
