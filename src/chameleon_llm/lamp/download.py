"""Download official LaMP files with HTTP Range resume, JSON validation and atomic rename.

URLs follow the LaMP site (https://lamp-benchmark.github.io/download)::

    {base}/LaMP_{n}/{split}/{split}_questions.json        user-based split
    {base}/time/LaMP_{n}/{split}/{split}_outputs.json     time-based split
    {base}/LaMP_2/new/...                                  LaMP-2 movie tagging (LaMP_2M)
    {base}/LaMP_2/...                                      LaMP-2 news, the retired version (LaMP_2N)

The test split ships questions only. LaMP-6 questions hold Avocado ids, not text (the corpus is
licensed by the LDC; see the LaMP README to rebuild it).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any

from chameleon_llm.lamp.tasks import TaskSpec, get_task

BASE_URL = "https://ciir.cs.umass.edu/downloads/LaMP"
SPLITS = ("train", "dev", "test")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the message names the URL, the cause and how to fetch the file by hand."""


def _task_path(spec: TaskSpec) -> str:
    if spec.name == "LaMP_2M":
        return "LaMP_2/new"
    if spec.name == "LaMP_2N":
        return "LaMP_2"
    return spec.name


def task_urls(
    task: str | TaskSpec, split: str, *, time_based: bool = False, base_url: str = BASE_URL
) -> dict[str, str]:
    """Official URLs of a task split: ``{"questions": url, "outputs": url}`` (no outputs for test)."""
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    prefix = base_url.rstrip("/") + ("/time" if time_based else "") + f"/{_task_path(spec)}/{split}"
    urls = {"questions": f"{prefix}/{split}_questions.json"}
    if split != "test":
        urls["outputs"] = f"{prefix}/{split}_outputs.json"
    return urls


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"Fetch it by hand with `curl -L -C - -o {dest} {url}` "
        "(or from https://lamp-benchmark.github.io/download) and run again; an existing valid file is kept"
    )


def _validate_json(path: Path, kind: str) -> None:
    """Check ``path`` parses and has the shape of a questions (list) or outputs (object) file."""
    with path.open(encoding="utf-8") as fh:
        data: Any = json.load(fh)
    if kind == "questions" and not isinstance(data, list):
        raise ValueError(f"expected a JSON list of queries, got {type(data).__name__}")
    if kind == "outputs" and not (isinstance(data, dict) and isinstance(data.get("golds"), list)):
        raise ValueError("expected a JSON object with a 'golds' list")


def _open(url: str, offset: int, timeout: float) -> HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "chameleon-llm"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    return response


def _fetch_to_part(url: str, part: Path, timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part file is already complete
            return
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        expected = response.length
        received = 0
        with part.open("ab" if resumed else "wb") as fh:
            while chunk := response.read(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    if expected is not None and received < expected:
        raise OSError(f"connection closed after {received} of {expected} bytes")


def download_file(url: str, dest: str | Path, *, kind: str = "questions", timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumable), validate the JSON, rename atomically.

    An existing valid ``dest`` is kept. Failures raise :class:`DownloadError`; an interrupted
    transfer leaves ``dest.part`` for the next call to resume, a corrupt one is deleted.
    """
    target = Path(dest)
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        try:
            _validate_json(target, kind)
            return target
        except (ValueError, UnicodeDecodeError):
            target.unlink()
    try:
        _fetch_to_part(url, part, timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: server answered HTTP {exc.code} {exc.reason}. {_manual_hint(url, target)}"
        ) from exc
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{url}: download failed ({reason}); offline or server unreachable. "
            f"Partial data kept in {part} for resume. {_manual_hint(url, target)}"
        ) from exc
    try:
        _validate_json(part, kind)
    except (ValueError, UnicodeDecodeError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: downloaded file is not a valid LaMP {kind} JSON file ({exc}); it was deleted. "
            f"{_manual_hint(url, target)}"
        ) from exc
    os.replace(part, target)
    return target


def download_task(
    task: str | TaskSpec,
    split: str,
    dest: str | Path,
    *,
    time_based: bool = False,
    base_url: str = BASE_URL,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Download a task split into ``dest`` as ``{split}_questions.json`` (+ ``{split}_outputs.json``).

    Load the result with ``load_task_dir(dest, split=split)``.
    """
    folder = Path(dest)
    files: dict[str, Path] = {}
    for kind, url in task_urls(task, split, time_based=time_based, base_url=base_url).items():
        files[kind] = download_file(url, folder / f"{split}_{kind}.json", kind=kind, timeout=timeout)
    return files
