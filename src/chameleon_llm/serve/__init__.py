"""``chameleon serve``: an OpenAI-compatible chat server that applies each user's edit.

The CLI builds a :class:`ServeSettings` (``ServeSettings.load(config, host=..., port=..., store=...)``)
and calls :func:`run_server`. :func:`create_app` gives the ASGI app (with an injectable model factory
and fit function, for tests and embedding). Names are imported lazily, so ``chameleon`` keeps working
when the ``serve`` extra (FastAPI, uvicorn) is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, run_server
    from .settings import ApiKey, ServeSettings, SettingsError
    from .store import Store

_EXPORTS = {
    "create_app": "app",
    "run_server": "app",
    "ApiKey": "settings",
    "ServeSettings": "settings",
    "SettingsError": "settings",
    "Store": "store",
}
__all__ = ["ApiKey", "ServeSettings", "SettingsError", "Store", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
