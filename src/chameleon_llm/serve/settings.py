"""Server settings: defaults < config file (TOML/JSON) < ``CHAMELEON_*`` environment < explicit values."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ..models import DEFAULT_MODEL, DTypeName

ENV_PREFIX = "CHAMELEON_"
Permission = Literal["chat", "read", "write", "delete"]
ALL_PERMISSIONS: frozenset[Permission] = frozenset({"chat", "read", "write", "delete"})


class SettingsError(ValueError):
    """The settings or a config/keys file are invalid; the message names the source."""


class ApiKey(BaseModel):
    """One API key: the user ids (glob patterns, ``*`` for all) it may act on, and what it may do."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    key: SecretStr | None = None
    key_sha256: str | None = Field(None, description="hex SHA-256 of the key, instead of the key itself")
    users: list[str] = Field(default_factory=lambda: ["*"])
    allow: set[Permission] = Field(default_factory=lambda: set(ALL_PERMISSIONS))

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self

    def digest(self) -> str:
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()


def default_store() -> Path:
    return Path(platformdirs.user_data_dir("chameleon-llm")) / "serve.sqlite3"


class ServeSettings(BaseModel):
    """Everything ``chameleon serve`` can be told; every field is also ``CHAMELEON_<FIELD>``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    store: Path = Field(default_factory=default_store, description="SQLite database file")
    model: str = DEFAULT_MODEL
    model_factory: str | None = Field(None, description="'module:function' returning a LoadedModel")
    dtype: DTypeName = "float32"
    device: str = "cpu"
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads (0: torch's default)")
    fit_function: str | None = Field(None, description="'module:function' with fit_user's signature")
    fit_overrides: dict[str, Any] = Field(
        default_factory=dict, description='FitConfig overrides, {"edit.alpha": 1}'
    )
    fit_workers: int = Field(1, ge=1, le=8)
    min_history_to_fit: int = Field(2, ge=1)
    resume_interrupted_jobs: bool = False
    max_batch_size: int = Field(16, ge=1, le=256)
    max_wait_ms: float = Field(20.0, ge=0)
    max_queue: int = Field(512, ge=1)
    default_max_tokens: int = Field(128, ge=1)
    max_tokens_limit: int = Field(512, ge=1)
    max_prompt_tokens: int = Field(2048, ge=16)
    max_messages: int = Field(64, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_history_items_per_request: int = Field(500, ge=1)
    max_history_items_per_user: int = Field(5000, ge=1)
    max_item_chars: int = Field(2000, ge=50)
    max_pending_jobs: int = Field(16, ge=1, description="queued + running fits, server-wide")
    api_keys: list[ApiKey] = Field(default_factory=list)
    keys_file: Path | None = None
    allow_unauthenticated: bool = Field(False, description="serve a non-loopback host without API keys")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_content: bool = Field(False, description="with log_level=debug, log history and prompt text")
    edit_cache_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _limits(self) -> ServeSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        return self

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServeSettings:
        """Merge defaults, a config file (or ``CHAMELEON_CONFIG``), the environment and ``overrides``.

        ``None`` overrides are ignored, so CLI options left unset do not mask the other sources.
        """
        environ = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = config_file or environ.get(ENV_PREFIX + "CONFIG")
        if path:
            data.update(read_config_file(Path(path)))
        data.update(env_values(environ))
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise SettingsError(f"invalid server settings: {exc}") from exc

    def all_keys(self) -> list[ApiKey]:
        """Keys from the settings plus the keys file."""
        return [*self.api_keys, *(read_keys_file(self.keys_file) if self.keys_file else [])]

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_RAW_STRING_FIELDS = {
    "host",
    "store",
    "model",
    "model_factory",
    "dtype",
    "device",
    "fit_function",
    "keys_file",
    "log_level",
}


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """``CHAMELEON_<FIELD>`` values; JSON is parsed for non-string fields (lists, dicts, numbers)."""
    out: dict[str, Any] = {}
    for name in ServeSettings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name in _RAW_STRING_FIELDS:
            out[name] = raw
            continue
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(
            f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file: top-level keys, or a ``[serve]`` table."""
    data = _read_structured(path)
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold an object/table of settings")
    section = data.get("serve", data)
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: 'serve' must be a table")
    return dict(section)


def read_keys_file(path: Path) -> list[ApiKey]:
    """API keys from a TOML/JSON file: a list, or ``api_keys = [...]``."""
    data = _read_structured(path)
    items = data.get("api_keys", []) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise SettingsError(f"{path} must hold a list of keys or an 'api_keys' list")
    try:
        return [ApiKey.model_validate(item) for item in items]
    except ValueError as exc:
        raise SettingsError(f"{path}: invalid key entry: {exc}") from exc
