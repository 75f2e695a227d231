"""Tests of the LaMP data layer: loaders, task specs, prompts, answer parsing, downloads and commands."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console

from chameleon_llm.lamp import (
    DownloadError,
    LampFormatError,
    build_prompt,
    download_file,
    download_task,
    extract_query_text,
    get_task,
    load_lamp_files,
    load_task_dir,
    parse_answer,
    parse_citation_input,
    profile_to_history,
    task_urls,
)
from chameleon_llm.lamp.commands import download_command, score_command

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lamp"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH = SHARED / "bench"
SAMPLES = SHARED / "lamp-samples"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared LaMP data lives in ../shared/data)")
    return path


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize(
    ("folder", "task", "n", "users", "n_labels", "first_pair"),
    [
        ("news-headline", "LaMP_4", 80, 40, 0, ("text", "title")),
        ("news-category", "LaMP_2N", 80, 40, 19, ("text", "category")),
        ("wine-rating", "LaMP_3", 44, 11, 5, ("text", "score")),
        ("paper-title", "LaMP_5", 14, 7, 0, ("abstract", "title")),
    ],
)
def test_bench_task_dirs_load(
    folder: str, task: str, n: int, users: int, n_labels: int, first_pair: tuple[str, str]
) -> None:
    dataset = load_task_dir(shared(BENCH / folder))
    assert dataset.task.name == task
    assert len(dataset) == n and dataset.golds is not None and set(dataset.golds) == set(dataset.ids)
    grouped = dataset.users()
    assert len(grouped) == users
    assert all(q.user_id == user for user, qs in grouped.items() for q in qs)
    assert len(dataset.labels) == n_labels
    query = dataset.queries[0]
    item = query.profile[0]
    history = dataset.history(query)
    assert len(history) == len(query.profile)
    assert history[0]["input"] == item[first_pair[0]]
    assert history[0]["output"] == str(item[first_pair[1]])
    assert history[0]["id"] == item["id"]


def test_bench_news_category_uses_its_labels_json() -> None:
    dataset = load_task_dir(shared(BENCH / "news-category"))
    labels = json.loads((BENCH / "news-category" / "labels.json").read_text(encoding="utf-8"))
    assert dataset.labels == labels
    assert dataset.task.labels == tuple(labels)
    assert dataset.task_field == "LaMP_2N"
    assert dataset.golds is not None and set(dataset.golds.values()) <= set(labels)
    history = dataset.history(dataset.queries[0])
    assert {"input", "output", "title", "date", "id"} <= set(history[0])


@pytest.mark.parametrize("folder", ["news-headline", "news-category", "wine-rating", "paper-title"])
def test_prompt_roundtrip_on_bench(folder: str) -> None:
    dataset = load_task_dir(shared(BENCH / folder))
    for query in dataset:
        text = extract_query_text(dataset.task, query.input)
        assert text and len(text) < len(query.input) and query.input.endswith(text)
        assert build_prompt(dataset.task, text) == query.input


@pytest.mark.parametrize(
    ("stem", "task", "n"),
    [
        ("LaMP_1_user_dev", "LaMP_1", 3),
        ("LaMP_2news_user_dev", "LaMP_2N", 3),
        ("LaMP_2news_user_train", "LaMP_2N", 4),
    ],
)
def test_official_samples_load_as_they_are(stem: str, task: str, n: int) -> None:
    questions = shared(SAMPLES / f"{stem}_questions_sample.json")
    dataset = load_lamp_files(questions, SAMPLES / f"{stem}_outputs_sample.json")
    assert dataset.task.name == task
    assert dataset.task_field == task[:6]  # the files say "LaMP_1" / "LaMP_2"
    assert len(dataset) == n
    assert all(isinstance(q.id, str) and q.user_id is None for q in dataset)
    assert list(dataset.users()) == dataset.ids  # user-based release: one user per query
    for query in dataset:
        if task == "LaMP_1":
            parsed = parse_citation_input(query.input)
            assert parsed is not None
            assert build_prompt(task, parsed[0], parsed[1:]) == query.input
            assert extract_query_text(task, query.input) == f"{parsed[1]} {parsed[2]}"
        else:
            assert build_prompt(dataset.task, extract_query_text(task, query.input)) == query.input
    history = dataset.history(dataset.queries[0])
    item = dataset.queries[0].profile[0]
    if task == "LaMP_1":
        assert (history[0]["input"], history[0]["output"]) == (item["abstract"], item["title"])
    else:
        assert (history[0]["input"], history[0]["output"]) == (item["text"], item["category"])


def test_lamp2_without_outputs_is_inferred_from_inputs() -> None:
    dataset = load_lamp_files(shared(SAMPLES / "LaMP_2news_user_dev_questions_sample.json"))
    assert dataset.task.name == "LaMP_2N" and dataset.golds is None


# --------------------------------------------------------------------------- own fixtures


def test_movie_fixture_resolves_lamp2_to_movies() -> None:
    dataset = load_lamp_files(FIXTURES / "lamp2m_dev_questions.json", FIXTURES / "lamp2m_dev_outputs.json")
    assert dataset.task.name == "LaMP_2M"
    assert dataset.task_field == "LaMP_2"
    assert len(dataset.labels) == 15
    history = dataset.history(dataset.queries[0])
    assert history[0] == {
        "input": "A crew of miners finds a signal beneath the ice of a distant moon.",
        "output": "sci-fi",
        "id": "9000",
    }


def test_time_based_fixture_groups_by_user() -> None:
    dataset = load_task_dir(FIXTURES / "lamp7_time")
    assert dataset.task.name == "LaMP_7"
    users = dataset.users()
    assert {u: [q.id for q in qs] for u, qs in users.items()} == {
        "u-ada": ["700", "701"],
        "u-bo": ["702", "703"],
    }
    history = dataset.history(dataset.queries[0])
    assert history[0] == {
        "input": "",
        "output": "just fixed the bike chain with a hairpin, feeling like an engineer today",
        "id": "7000",
        "date": "2021-03-02",
    }
    assert extract_query_text("LaMP_7", dataset.queries[0].input).startswith("I am currently stuck")


def test_explicit_task_must_agree_with_outputs() -> None:
    with pytest.raises(LampFormatError, match="task='LaMP_4' was requested"):
        load_lamp_files(
            FIXTURES / "lamp7_time/questions.json", FIXTURES / "lamp7_time/outputs.json", "LaMP_4"
        )
    dataset = load_lamp_files(FIXTURES / "lamp7_time/questions.json", task="lamp-7")
    assert dataset.task.name == "LaMP_7" and dataset.golds is None


def test_load_task_dir_finds_official_split_names(tmp_path: Path) -> None:
    questions = json.loads((FIXTURES / "lamp7_time/questions.json").read_text(encoding="utf-8"))
    outputs = json.loads((FIXTURES / "lamp7_time/outputs.json").read_text(encoding="utf-8"))
    write_json(tmp_path / "dev_questions.json", questions)
    write_json(tmp_path / "dev_outputs.json", outputs)
    assert load_task_dir(tmp_path).golds == {g["id"]: g["output"] for g in outputs["golds"]}
    write_json(tmp_path / "train_questions.json", questions[:1])
    with pytest.raises(LampFormatError, match="pass split="):
        load_task_dir(tmp_path)
    train = load_task_dir(tmp_path, split="train")
    assert train.ids == ["700"] and train.golds is None


# --------------------------------------------------------------------------- malformed files

GOOD_QUERY = {"id": "1", "input": "Generate a headline for the following article: x", "profile": []}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"id": "1"}, "must be a JSON list of queries"),
        ([GOOD_QUERY, "oops"], "record 1: a query must be a JSON object"),
        (
            [{**GOOD_QUERY, "id": 7}],
            "record 0: id must be a string, got int 7. Fix: write ids as JSON strings",
        ),
        ([{"input": "x", "profile": []}], "record 0: missing id"),
        ([{"id": "9", "profile": []}], "record 0 \\(id='9'\\): missing 'input'"),
        ([{**GOOD_QUERY, "profile": {"a": 1}}], "'profile' must be a list of objects"),
        ([{**GOOD_QUERY, "user_id": 3}], "user_id must be a string"),
        ([GOOD_QUERY, GOOD_QUERY], "record 1 \\(id='1'\\): duplicate id \\(first seen at record 0\\)"),
        (
            [GOOD_QUERY, {**GOOD_QUERY, "id": "2", "profile": [{"text": "t", "title": "h"}, {"text": "t"}]}],
            "record 1 \\(id='2'\\): profile item 1 lacks a text/number field 'title' needed for LaMP_4",
        ),
    ],
)
def test_malformed_questions_are_reported(tmp_path: Path, content: Any, message: str) -> None:
    path = write_json(tmp_path / "questions.json", content)
    with pytest.raises(LampFormatError, match=message) as info:
        load_lamp_files(path, task="LaMP_4")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"id": "1", "output": "x"}], "must be a JSON object with a 'golds' list"),
        (
            {"task": "LaMP_4", "golds": [{"id": 1, "output": "x"}]},
            "record 0: each entry of 'golds' needs a string 'id'",
        ),
        (
            {"task": "LaMP_4", "golds": [{"id": "1", "output": None}]},
            "record 0 \\(id='1'\\): 'output' must be a string",
        ),
        (
            {"task": "LaMP_4", "golds": [{"id": "2", "output": "x"}]},
            "1 query ids without gold \\(e.g. \\['1'\\]\\)",
        ),
        ({"task": "LaMP_99", "golds": [{"id": "1", "output": "x"}]}, "cannot use its task 'LaMP_99'"),
    ],
)
def test_malformed_outputs_are_reported(tmp_path: Path, content: Any, message: str) -> None:
    questions = write_json(tmp_path / "questions.json", [GOOD_QUERY])
    outputs = write_json(tmp_path / "outputs.json", content)
    with pytest.raises(LampFormatError, match=message) as info:
        load_lamp_files(questions, outputs)
    assert "outputs.json" in str(info.value)


def test_invalid_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text('[{"id": "1",\n "input": }]', encoding="utf-8")
    with pytest.raises(LampFormatError, match=r"questions.json: not valid JSON \(.* line 2, column 11\)"):
        load_lamp_files(path, task="LaMP_4")


def test_bad_labels_file(tmp_path: Path) -> None:
    (tmp_path / "questions.json").write_text(json.dumps([GOOD_QUERY]), encoding="utf-8")
    write_json(tmp_path / "labels.json", ["a", "a"])
    with pytest.raises(LampFormatError, match="duplicate labels"):
        load_task_dir(tmp_path, task="LaMP_2N")


def test_task_cannot_be_inferred(tmp_path: Path) -> None:
    path = write_json(tmp_path / "questions.json", [{"id": "1", "input": "hello", "profile": []}])
    with pytest.raises(LampFormatError, match=r"cannot infer the task\. Fix: pass task="):
        load_lamp_files(path)


def test_profile_to_history_numbers_and_missing_fields() -> None:
    history = profile_to_history(
        "LaMP_3", [{"text": "good", "score": 4.0, "id": "a"}, {"text": "ok", "score": 2}]
    )
    assert history == [{"input": "good", "output": "4", "id": "a"}, {"input": "ok", "output": "2"}]
    with pytest.raises(LampFormatError, match="LaMP_5 profile item 0 has no text field 'abstract'"):
        profile_to_history("LaMP_5", [{"title": "t"}])


def test_profile_to_history_task_framing_matches_the_query_prompt() -> None:
    profile = [{"text": "Silky tannins.", "score": 5, "id": "a"}]
    framed = profile_to_history("LaMP_3", profile, framing="task")
    assert framed[0]["input"] == build_prompt("LaMP_3", "Silky tannins.")
    assert framed[0]["input"].startswith("What is the score of the following review")
    assert framed[0]["output"] == "5" and framed[0]["id"] == "a"
    # the framed input is exactly what a query of that task carries, so extraction round-trips
    assert extract_query_text("LaMP_3", framed[0]["input"]) == "Silky tannins."
    # LaMP-7 has no per-item input to frame: it stays raw
    assert profile_to_history("LaMP_7", [{"text": "hi"}], framing="task")[0]["input"] == ""
    with pytest.raises(ValueError, match="unknown history framing 'prompt'"):
        profile_to_history("LaMP_3", profile, framing="prompt")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tasks


def test_task_names_and_aliases() -> None:
    assert get_task("LaMP-4").name == "LaMP_4"
    assert get_task("lamp4").name == "LaMP_4"
    assert get_task("LaMP_2news").name == "LaMP_2N"
    assert get_task("lamp-2m").name == "LaMP_2M"
    with pytest.raises(ValueError, match="ambiguous"):
        get_task("LaMP_2")
    with pytest.raises(ValueError, match="unknown LaMP task"):
        get_task("LaMP_8")
    assert get_task("LaMP_1").labels == ("[1]", "[2]")
    assert get_task("LaMP_3").labels == ("1", "2", "3", "4", "5")
    assert len(get_task("LaMP_2N").labels) == len(get_task("LaMP_2M").labels) == 15
    assert {get_task(f"LaMP_{n}").kind for n in (4, 5, 6, 7)} == {"generation"}
    assert get_task("LaMP_3").metrics == ("MAE", "RMSE")


def test_prompts_follow_the_paper() -> None:
    assert build_prompt("LaMP_4", "Body.") == "Generate a headline for the following article: Body."
    assert build_prompt("LaMP_6", "Hi all").startswith("Generate a subject for the following email: ")
    movie = build_prompt("LaMP_2M", "A film.")
    assert "tags: [sci-fi, based on a book, comedy," in movie and movie.endswith("description: A film.")
    assert build_prompt(get_task("LaMP_2N").with_labels(["x", "y"]), "T").endswith(
        "categories: [x, y] article: T"
    )
    with pytest.raises(ValueError, match="references"):
        build_prompt("LaMP_1", "A title")


def test_extract_query_text_fallbacks() -> None:
    assert extract_query_text("LaMP_4", "Please make a headline. article: The body") == "The body"
    assert extract_query_text("LaMP_3", "  just text  ") == "just text"
    assert extract_query_text("LaMP_7", build_prompt("LaMP_7", "a: b")) == "a: b"


@pytest.mark.parametrize(
    ("task", "completion", "expected"),
    [
        ("LaMP_1", "[2]", "[2]"),
        ("LaMP_1", "The answer is [ 1 ] because...", "[1]"),
        ("LaMP_1", "Reference 2", "[2]"),
        ("LaMP_1", "neither", None),
        ("LaMP_2M", "Dark Comedy.", "dark comedy"),
        ("LaMP_2M", 'Tag: "sci-fi"', "sci-fi"),
        ("LaMP_2M", "I think this is a dark comedy with violence", "dark comedy"),
        ("LaMP_2M", "nothing fits", None),
        ("LaMP_2N", "science & technology\nbecause it is about chips", "science & technology"),
        ("LaMP_3", "4", "4"),
        ("LaMP_3", "Score: 5/5", "5"),
        ("LaMP_3", "I would give it 4.5 stars", "4.5"),
        ("LaMP_3", "10 out of 10", None),
        ("LaMP_4", '  Headline: "Markets Rally"\nExplanation: ...', "Markets Rally"),
        ("LaMP_5", "```\nA Title\n```", "A Title"),
        ("LaMP_7", "   ", None),
    ],
)
def test_parse_answer(task: str, completion: str, expected: str | None) -> None:
    assert parse_answer(task, completion) == expected


# --------------------------------------------------------------------------- downloads


class _Handler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    truncate_once: ClassVar[set[str]] = set()
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        header = self.headers.get("Range")
        if header and header.startswith("bytes="):
            start = int(header[6:].split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.path in self.truncate_once:
            self.truncate_once.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.files, _Handler.truncate_once, _Handler.seen = {}, set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


QUESTIONS_BYTES = (FIXTURES / "lamp7_time" / "questions.json").read_bytes()
OUTPUTS_BYTES = (FIXTURES / "lamp7_time" / "outputs.json").read_bytes()


def test_task_urls_follow_the_official_layout() -> None:
    base = "https://ciir.cs.umass.edu/downloads/LaMP"
    assert task_urls("LaMP_4", "dev") == {
        "questions": f"{base}/LaMP_4/dev/dev_questions.json",
        "outputs": f"{base}/LaMP_4/dev/dev_outputs.json",
    }
    assert task_urls("LaMP_2M", "train", time_based=True)["questions"] == (
        f"{base}/time/LaMP_2/new/train/train_questions.json"
    )
    assert task_urls("LaMP_2N", "dev")["outputs"] == f"{base}/LaMP_2/dev/dev_outputs.json"
    assert list(task_urls("LaMP_1", "test")) == ["questions"]
    with pytest.raises(ValueError, match="unknown split"):
        task_urls("LaMP_1", "validation")


def test_download_task_then_load(server: str, tmp_path: Path) -> None:
    _Handler.files = {
        "/LaMP_7/dev/dev_questions.json": QUESTIONS_BYTES,
        "/LaMP_7/dev/dev_outputs.json": OUTPUTS_BYTES,
    }
    files = download_task("LaMP_7", "dev", tmp_path, base_url=server)
    assert files["questions"].read_bytes() == QUESTIONS_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev_outputs.json", "dev_questions.json"]
    assert load_task_dir(tmp_path, split="dev").task.name == "LaMP_7"
    download_task("LaMP_7", "dev", tmp_path, base_url=server)  # valid files are kept, not fetched again
    assert len(_Handler.seen) == 2


def test_download_resumes_a_partial_file(server: str, tmp_path: Path) -> None:
    _Handler.files = {"/q.json": QUESTIONS_BYTES}
    dest = tmp_path / "q.json"
    (tmp_path / "q.json.part").write_bytes(QUESTIONS_BYTES[:100])
    download_file(f"{server}/q.json", dest)
    assert _Handler.seen == [("/q.json", "bytes=100-")]
    assert dest.read_bytes() == QUESTIONS_BYTES
    assert not (tmp_path / "q.json.part").exists()


def test_interrupted_download_keeps_part_then_resumes(server: str, tmp_path: Path) -> None:
    _Handler.files = {"/q.json": QUESTIONS_BYTES}
    _Handler.truncate_once = {"/q.json"}
    dest = tmp_path / "q.json"
    with pytest.raises(DownloadError, match="Partial data kept in"):
        download_file(f"{server}/q.json", dest)
    part = tmp_path / "q.json.part"
    assert 0 < part.stat().st_size < len(QUESTIONS_BYTES) and not dest.exists()
    download_file(f"{server}/q.json", dest)
    assert _Handler.seen[-1] == ("/q.json", f"bytes={len(QUESTIONS_BYTES) // 2}-")
    assert dest.read_bytes() == QUESTIONS_BYTES


def test_corrupt_json_is_detected(server: str, tmp_path: Path) -> None:
    _Handler.files = {"/bad.json": b'[{"id": "1", "input": ', "/obj.json": b'{"golds": 3}'}
    with pytest.raises(DownloadError, match=r"not a valid LaMP questions JSON file .* it was deleted"):
        download_file(f"{server}/bad.json", tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="expected a JSON object with a 'golds' list"):
        download_file(f"{server}/obj.json", tmp_path / "obj.json", kind="outputs")


def test_http_error_is_reported(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"/missing.json: server answered HTTP 404.*curl -L -C -"):
        download_file(f"{server}/missing.json", tmp_path / "m.json")


def test_offline_error_names_url_and_manual_fix(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError) as info:
        download_task("LaMP_4", "dev", tmp_path, base_url=url, timeout=5)
    message = str(info.value)
    assert f"{url}/LaMP_4/dev/dev_questions.json" in message
    assert "offline or server unreachable" in message and "lamp-benchmark.github.io/download" in message


# --------------------------------------------------------------------------- commands


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=120, color_system=None), buffer


def test_score_command_json_and_table(tmp_path: Path) -> None:
    golds = FIXTURES / "lamp7_time" / "outputs.json"
    preds = tmp_path / "preds.json"
    gold_rows = json.loads(golds.read_text(encoding="utf-8"))["golds"]
    write_json(preds, {"task": "LaMP_7", "golds": [{**g, "output": g["output"].upper()} for g in gold_rows]})
    console, buffer = _console()
    result = score_command(preds, golds, as_json=True, console=console)
    assert result == {"task": "LaMP_7", "n": 4, "metrics": {"rouge-1": 1.0, "rouge-L": 1.0}}
    assert json.loads(buffer.getvalue()) == result
    console, buffer = _console()
    score_command(preds, golds, console=console)
    assert "rouge-L" in buffer.getvalue() and "1.0000" in buffer.getvalue()


def test_score_command_uses_labels_json_next_to_golds(tmp_path: Path) -> None:
    golds = write_json(
        tmp_path / "outputs.json", {"task": "LaMP_2N", "golds": [{"id": "1", "output": "weird news"}]}
    )
    preds = write_json(
        tmp_path / "preds.json", {"task": "LaMP_2N", "golds": [{"id": "1", "output": "weird news"}]}
    )
    console, _ = _console()
    # Without labels.json "weird news" is no LaMP-2 news category: -1 == -1 is "accurate", no label scores.
    assert score_command(preds, golds, console=console)["metrics"] == {"accuracy": 1.0, "f1": 0.0}
    write_json(tmp_path / "labels.json", ["weird news", "politics"])
    assert score_command(preds, golds, console=console)["metrics"] == {"accuracy": 1.0, "f1": 0.5}


def test_score_command_rejects_other_task(tmp_path: Path) -> None:
    golds = FIXTURES / "lamp7_time" / "outputs.json"
    preds = write_json(tmp_path / "p.json", {"task": "LaMP_4", "golds": [{"id": "700", "output": "x"}]})
    with pytest.raises(LampFormatError, match="predictions are for 'LaMP_4'"):
        score_command(preds, golds, console=_console()[0])


def test_download_command_prints_paths(server: str, tmp_path: Path) -> None:
    _Handler.files = {"/LaMP_7/test/test_questions.json": QUESTIONS_BYTES}
    console, buffer = _console()
    files = download_command("LaMP_7", "test", tmp_path, base_url=server, console=console)
    assert list(files) == ["questions"]
    assert "test_questions.json" in buffer.getvalue()
