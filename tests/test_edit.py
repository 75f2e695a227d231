"""UserEdit files: round trip, content-hash id, tamper detection, model identity, atomic writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from chameleon_llm.edit import EditFileError, UserEdit, atomic_write_bytes
from chameleon_llm.models import LoadedModel
from chameleon_llm.steering import steer
from conftest import EditFactory


def assert_same_edit(a: UserEdit, b: UserEdit) -> None:
    assert a.layers == b.layers
    assert torch.equal(a.personal, b.personal)
    assert torch.equal(a.neutral, b.neutral)
    assert a.hook_point == b.hook_point
    assert a.strengths == b.strengths
    assert a.model == b.model
    assert a.insights == b.insights
    assert a.stats == b.stats
    assert a.config == b.config
    assert a.provenance == b.provenance
    assert a.id == b.id


def split_file(data: bytes) -> tuple[dict[str, object], bytes]:
    """A safetensors file as (header dict, tensor bytes)."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def edit_parts(edit: UserEdit) -> tuple[dict[str, object], bytes, dict[str, str], dict[str, object]]:
    """An edit file as (header, tensor bytes, its metadata, the decoded Chameleon metadata)."""
    header, body = split_file(edit.to_bytes())
    meta = header["__metadata__"]
    assert isinstance(meta, dict)
    return header, body, meta, json.loads(meta["chameleon"])


def join_file(header: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # keep the tensor data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + body


def test_round_trip(llama: LoadedModel, make_edit: EditFactory, tmp_path: Path) -> None:
    edit = make_edit(llama, rank=2, alpha=0.8, beta=0.3, max_edit_ratio=0.5, positions="all")
    path = edit.save(tmp_path / "user.safetensors")
    loaded = UserEdit.load(path)
    assert_same_edit(loaded, edit)
    assert loaded.personal.dtype == torch.float32 and loaded.personal.shape == (2, 2, llama.hidden_size)
    assert loaded.strengths.max_edit_ratio == 0.5 and loaded.positions == "all"
    assert_same_edit(UserEdit.from_bytes(edit.to_bytes()), edit)


def test_round_trip_of_a_bfloat16_edit_keeps_the_id(llama: LoadedModel, make_edit: EditFactory) -> None:
    edit = make_edit(llama)
    half = dataclasses.replace(edit, personal=edit.personal.bfloat16(), neutral=edit.neutral.bfloat16())
    loaded = UserEdit.from_bytes(half.to_bytes())
    assert loaded.id == half.id


def test_id_is_a_content_hash(llama: LoadedModel, make_edit: EditFactory) -> None:
    edit = make_edit(llama)
    assert edit.id == make_edit(llama).id  # same content, same id
    assert len(edit.id) == 20
    personal = edit.personal.clone()
    personal[0, 0, 0] += 1e-3
    assert dataclasses.replace(edit, personal=personal).id != edit.id
    neutral = edit.neutral.clone()
    neutral[-1, -1] = -neutral[-1, -1]
    assert dataclasses.replace(edit, neutral=neutral).id != edit.id
    assert edit.with_strengths(alpha=edit.alpha + 0.1).id != edit.id
    assert edit.with_strengths(positions="generated").id != edit.id
    assert edit.with_strengths(max_edit_ratio=0.3).id != edit.id
    assert dataclasses.replace(edit, layers=(1, 2)).id != edit.id
    assert dataclasses.replace(edit, insights={"personal": "other"}).id != edit.id
    # provenance (creation time, versions) is not content
    other_time = dataclasses.replace(edit, provenance={"created_at": "2030-01-01", "git_commit": "abc"})
    assert other_time.id == edit.id
    assert UserEdit.from_bytes(other_time.to_bytes()).provenance["git_commit"] == "abc"


def test_flipped_tensor_byte_is_detected(llama: LoadedModel, make_edit: EditFactory, tmp_path: Path) -> None:
    edit = make_edit(llama)
    path = edit.save(tmp_path / "user.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # a byte inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(EditFileError, match="modified after it was written"):
        UserEdit.load(path)


@pytest.mark.parametrize("field", ["strengths", "insights", "model", "layers"])
def test_edited_metadata_is_detected(
    llama: LoadedModel, make_edit: EditFactory, tmp_path: Path, field: str
) -> None:
    edit = make_edit(llama)
    header, body, meta, chameleon = edit_parts(edit)
    if field == "strengths":
        chameleon["strengths"]["alpha"] = 9.0
    elif field == "insights":
        chameleon["insights"]["personal"] = "someone else"
    elif field == "model":
        chameleon["model"]["name"] = "renamed"
    else:
        chameleon["layers"] = [1, 2]
    meta["chameleon"] = json.dumps(chameleon, sort_keys=True)
    path = tmp_path / "user.safetensors"
    path.write_bytes(join_file(header, body))
    with pytest.raises(EditFileError, match="modified after it was written"):
        UserEdit.load(path)


@pytest.mark.parametrize(
    "damage",
    ["invalid-json", "missing-layers", "bad-strengths", "wrong-format", "truncated", "not-safetensors"],
)
def test_damaged_files_raise_edit_file_error(
    llama: LoadedModel, make_edit: EditFactory, tmp_path: Path, damage: str
) -> None:
    data = make_edit(llama).to_bytes()
    header, body = split_file(data)
    meta = header["__metadata__"]
    assert isinstance(meta, dict)
    chameleon = json.loads(meta["chameleon"])
    if damage == "invalid-json":
        meta["chameleon"] = meta["chameleon"][:-5]
    elif damage == "missing-layers":
        del chameleon["layers"]
        meta["chameleon"] = json.dumps(chameleon)
    elif damage == "bad-strengths":
        chameleon["strengths"]["positions"] = "everywhere"
        meta["chameleon"] = json.dumps(chameleon)
    elif damage == "wrong-format":
        chameleon["format"] = "chameleon-edit/99"
        meta["chameleon"] = json.dumps(chameleon)
    path = tmp_path / "user.safetensors"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not-safetensors":
        path.write_bytes(b"personal: [0.1, 0.2]\n")
    else:
        path.write_bytes(join_file(header, body))
    with pytest.raises(EditFileError, match=str(path)):
        UserEdit.load(path)


def test_non_chameleon_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(st_save({"weight": torch.zeros(2, 2)}, metadata={"format": "pt"}))
    with pytest.raises(EditFileError, match="safetensors file but not a Chameleon edit"):
        UserEdit.load(path)
    with pytest.raises(EditFileError, match="not found"):
        UserEdit.load(tmp_path / "missing.safetensors")


def test_edit_for_another_model_is_refused(
    tiny_models: dict[str, LoadedModel], make_edit: EditFactory, tmp_path: Path
) -> None:
    llama, qwen = tiny_models["llama"], tiny_models["qwen2"]
    edit = UserEdit.load(make_edit(llama).save(tmp_path / "user.safetensors"))
    edit.check_model(llama.identity)  # the right model is accepted
    with pytest.raises(EditFileError) as info:
        edit.check_model(qwen.identity)
    message = str(info.value)
    assert "tiny-llama" in message and "tiny-qwen2" in message
    assert llama.config_hash in message and qwen.config_hash in message
    hooks_before = [(tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in qwen.model.modules()]
    with pytest.raises(EditFileError, match="tiny-qwen2"), steer(qwen, [None, edit]):
        pass
    assert [
        (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in qwen.model.modules()
    ] == hooks_before


def test_same_architecture_other_shape_is_refused(tokenizer: object, make_edit: EditFactory) -> None:
    """The identity is the shape-defining config, not only the name or model type."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chameleon_llm.models import wrap_model

    def tiny(layers: int) -> LoadedModel:
        cfg = LlamaConfig(
            vocab_size=len(tokenizer),  # type: ignore[arg-type]
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        return wrap_model(LlamaForCausalLM(cfg), tokenizer, "same-name")  # type: ignore[arg-type]

    three, four = tiny(3), tiny(4)
    edit = make_edit(three)
    with pytest.raises(EditFileError, match="same-name"):
        edit.check_model(four.identity)


def test_atomic_write_success_leaves_only_the_file(
    llama: LoadedModel, make_edit: EditFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "edits" / "nested"
    path = make_edit(llama).save(folder / "user.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["user.safetensors"]
    make_edit(llama, seed=1).save(path)  # overwrite
    assert sorted(p.name for p in folder.iterdir()) == ["user.safetensors"]
    assert UserEdit.load(path).id == make_edit(llama, seed=1).id


def test_atomic_write_failure_keeps_the_old_file(
    llama: LoadedModel, make_edit: EditFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = make_edit(llama, seed=1), make_edit(llama, seed=2)
    path = old.save(tmp_path / "user.safetensors")
    before = path.read_bytes()

    def failing_replace(src: object, dst: object) -> None:
        assert Path(str(src)).stat().st_size == len(new.to_bytes())  # fully written before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "fresh.safetensors")
    monkeypatch.undo()
    assert path.read_bytes() == before  # never a partial or mixed file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.safetensors"]  # no temp files left
    assert UserEdit.load(path).id == old.id


def test_atomic_write_failure_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError("io error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="io error"):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_invalid_shapes_are_rejected(llama: LoadedModel, make_edit: EditFactory) -> None:
    edit = make_edit(llama)

    def rebuilt(**changes: object) -> UserEdit:
        fields = {"layers": edit.layers, "personal": edit.personal, "neutral": edit.neutral}
        fields.update(changes)
        return UserEdit(**fields, hook_point="mlp", strengths=edit.strengths, model=edit.model)  # type: ignore[arg-type]

    assert rebuilt().id == dataclasses.replace(edit, insights={}, stats={}, config={}).id
    with pytest.raises(EditFileError, match="personal must be"):
        rebuilt(personal=edit.personal[0])
    with pytest.raises(EditFileError, match="personal must be"):
        rebuilt(personal=edit.personal[:1])
    with pytest.raises(EditFileError, match="neutral must be"):
        rebuilt(neutral=edit.neutral[:1])
    with pytest.raises(EditFileError, match="neutral must be"):
        rebuilt(neutral=edit.neutral[:, :-1])
    with pytest.raises(EditFileError, match="duplicate layers"):
        rebuilt(layers=(1, 1))


def test_a_file_written_before_edit_config_gained_a_field_keeps_its_id(
    llama: LoadedModel, make_edit: EditFactory
) -> None:
    edit = make_edit(llama)
    header, body, meta, chameleon = edit_parts(edit)
    # an older writer: its EditConfig had no "calibration_items" field, and it hashed what it wrote
    del chameleon["strengths"]["calibration_items"]
    h = hashlib.sha256(json.dumps(chameleon, sort_keys=True, default=str).encode())
    for t in (edit.personal, edit.neutral, edit.gaps):
        h.update(t.to(torch.float32).contiguous().numpy().tobytes())
    written = {**meta, "chameleon": json.dumps(chameleon), "id": h.hexdigest()[:20]}
    old = UserEdit.from_bytes(join_file({**header, "__metadata__": written}, body))
    assert old.id == written["id"]
    old_id = old.id
    # the id is that of the file as written, and it survives a save/load round trip
    assert UserEdit.from_bytes(old.to_bytes()).id == old_id
    # a real change of strengths still changes the id
    assert old.with_strengths(alpha=old.alpha + 0.5).id != old_id
