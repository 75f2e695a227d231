"""History files: accepted formats and clear errors for every way a user's file can be wrong."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from chameleon_llm.history import (
    HistoryError,
    HistoryItem,
    HistoryTruncationWarning,
    history_fingerprint,
    load_history,
    parse_history,
)

ITEMS = [
    {"input": "Review the phone", "output": "Fast, but the battery is weak.", "rating": 3},
    {"input": "Title this article", "output": "Climate policy in two sentences", "id": "a-2"},
]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def check_items(items: list[HistoryItem]) -> None:
    assert [it.input for it in items] == [d["input"] for d in ITEMS]
    assert [it.output for it in items] == [d["output"] for d in ITEMS]
    assert items[0].extra == {"rating": 3}
    assert items[1].extra == {"id": "a-2"}
    assert [it.to_dict() for it in items] == ITEMS


def test_json_list(tmp_path: Path) -> None:
    check_items(load_history(write(tmp_path, "h.json", json.dumps(ITEMS))))


def test_jsonl(tmp_path: Path) -> None:
    text = "\n".join(json.dumps(d) for d in ITEMS[:1]) + "\n\n  \n" + json.dumps(ITEMS[1]) + "\n"
    check_items(load_history(write(tmp_path, "h.jsonl", text)))


def test_object_with_history(tmp_path: Path) -> None:
    path = write(tmp_path, "h.json", json.dumps({"user": "u1", "history": ITEMS}))
    check_items(load_history(path))


def test_utf8_with_bom_and_non_ascii(tmp_path: Path) -> None:
    items = [{"input": "Résumé ✓", "output": "日本語のテキスト"}]
    path = write(tmp_path, "h.json", "\ufeff".encode() + json.dumps(items, ensure_ascii=False).encode())
    loaded = load_history(path)
    assert loaded[0].input == "Résumé ✓" and loaded[0].output == "日本語のテキスト"


def test_fingerprint_depends_on_content() -> None:
    items = parse_history(ITEMS)
    assert history_fingerprint(items) == history_fingerprint(parse_history(json.loads(json.dumps(ITEMS))))
    changed = parse_history([ITEMS[0], {**ITEMS[1], "output": "Another title"}])
    assert history_fingerprint(items) != history_fingerprint(changed)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty_list.json", "[]", "is empty: give at least one item"),
        ("empty_object.json", '{"history": []}', "is empty: give at least one item"),
        ("empty_file.json", "", "is empty: give at least one item"),
        ("blank_file.jsonl", "\n  \n", "is empty: give at least one item"),
        ("no_output.json", '[{"input": "q"}]', 'item 0 has no "output" field'),
        ("no_input.json", '[{"output": "a"}, {"output": "b"}]', 'item 0 has no "input" field'),
        (
            "number.json",
            '[{"input": "q", "output": "a"}, {"input": "q", "output": 4}]',
            '"output" must be a string',
        ),
        ("null.json", '[{"input": null, "output": "a"}]', '"input" must be a string, got NoneType'),
        ("blank_output.json", '[{"input": "q", "output": "  "}]', 'item 0 has an empty "output"'),
        ("not_object.json", '["just text"]', "item 0 is a str, expected an object"),
        ("scalar.json", "42", "must hold a JSON list"),
        ("object.json", '{"items": []}', "must hold a JSON list"),
        ("bad.json", '[{"input": "q",\n  "output": "a",}]', "not valid JSON (line 2, column"),
        (
            "bad.jsonl",
            '{"input": "q", "output": "a"}\n{"input": "q" "output": "a"}\n',
            "line 2 is not valid JSON (column 15)",
        ),
    ],
)
def test_errors_are_clear(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(HistoryError, match=re.escape(message)) as info:
        load_history(path)
    assert str(path) in str(info.value)


def test_number_output_message_names_item_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "h.json", json.dumps([ITEMS[0], {"input": "rate it", "output": 4}]))
    with pytest.raises(HistoryError) as info:
        load_history(path)
    message = str(info.value)
    assert "item 1" in message and "got int" in message and "(4)" in message
    assert "convert numbers and labels to text" in message


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "h.json", b'[{"input": "caf\xe9", "output": "ok"}]')
    with pytest.raises(HistoryError, match=r"is not UTF-8 \(bad byte at offset 15\)"):
        load_history(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="history file not found"):
        load_history(tmp_path / "nope.json")


def test_oversized_items_are_truncated_with_a_warning(tmp_path: Path) -> None:
    items = [{"input": "x" * 120, "output": "short"}, {"input": "q", "output": "y" * 90}]
    path = write(tmp_path, "h.json", json.dumps(items))
    with pytest.warns(HistoryTruncationWarning) as record:
        loaded = load_history(path, max_chars=60)
    messages = [str(w.message) for w in record if issubclass(w.category, HistoryTruncationWarning)]
    assert len(messages) == 2
    assert "item 0 input has 120 characters; truncated to 60" in messages[0]
    assert "item 1 output has 90 characters; truncated to 60" in messages[1]
    assert loaded[0].input == "x" * 60 and loaded[1].output == "y" * 60
    assert loaded[0].output == "short" and loaded[1].input == "q"


def test_no_warning_within_the_limit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = parse_history([{"input": "x" * 60, "output": "y" * 60}], max_chars=60)
    assert items[0].input == "x" * 60


def test_parse_history_from_records() -> None:
    with pytest.raises(HistoryError, match="my-user is empty"):
        parse_history([], source="my-user")
    with pytest.raises(HistoryError, match="my-user item 0 is a list"):
        parse_history([["q", "a"]], source="my-user")
    with pytest.warns(HistoryTruncationWarning):
        assert parse_history([{"input": "q" * 3000, "output": "a"}])[0].input == "q" * 2000  # default limit
