"""Model name resolution: packaged names, local GGUF files, hub ids and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from chameleon_llm import models
from chameleon_llm.models import ModelNotAvailableError, file_sha256, resolve_model_path


def test_hub_ids_and_folders_pass_through(tmp_path: Path) -> None:
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_missing_gguf_file_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"(?s)not found.*Fix"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_local_gguf_is_converted_into_a_cache_folder_keyed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAMELEON_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[Path, Path]] = []
    sources: list[object] = []

    def fake_convert(gguf: Path, target: Path, **kwargs: object) -> Path:
        calls.append((gguf, target))
        sources.append(kwargs.get("source"))
        return target

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    path = tmp_path / "Tiny-Q4.gguf"
    path.write_bytes(b"GGUF first version")
    first = resolve_model_path(str(path))
    path.write_bytes(b"GGUF second version")
    second = resolve_model_path(str(path))
    assert first != second  # a changed file never reuses the old conversion
    assert Path(first).parent == tmp_path / "cache" / "models"
    assert Path(second).name == f"gguf-tiny-q4-{file_sha256(path)[:16]}"
    assert [g for g, _ in calls] == [path, path]
    assert sources[-1] == {"sha256": file_sha256(path)}  # the digest is passed on, not hashed again


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * 5000
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin", chunk=1000) == hashlib.sha256(data).hexdigest()
