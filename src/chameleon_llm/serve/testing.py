"""Tiny random models and fit functions for tests and smoke runs (no download, deterministic).

``tiny_model`` builds the same 2-layer Llama (hidden 32) and character-level tokenizer in every
process, so a server started in a subprocess serves exactly the tokens the test expects.
"""

from __future__ import annotations

import os
import socket
import string
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..config import FitConfig
from ..fit import FitError, FitResult, Progress, fit_user
from ..history import HistoryItem
from ..models import LoadedModel, wrap_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<|im_start|>", "<|im_end|>", "<unk>")
TINY_FIT = {  # small and fast; the method choices are pinned so edits visibly change the tiny model's text
    "selection.k": 4,
    "insights.max_new_tokens": 16,
    "pairs.n_queries": 4,
    "pairs.max_new_tokens": 12,
    "pairs.min_cosine_distance": 0.0,
    "directions.ccs_restarts": 1,
    "directions.ccs_epochs": 20,
    "directions.band": (0.0, 1.0),
    "directions.personal": "svd",
    "pairs.source": "mixed",
    "activations.hook_point": "mlp",
    "activations.token": "last",
    "activations.max_length": 512,
    "edit.mode": "project",
    "edit.calibrate": False,
    "edit.alpha": 4.0,
    "edit.beta": 1.0,
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE over printable ASCII (one token a character) with a ChatML-like template."""
    chars = [_BYTE_CHARS[ord(c)] for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable character table (the ByteLevel alphabet), in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]) for b in range(256)]


_BYTE_CHARS = _byte_chars()


def tiny_model(seed: int = 0) -> LoadedModel:
    """A 2-layer Llama, hidden 32, over printable-ASCII characters; the same weights in every process.

    A large initializer range spreads the logits, so greedy decoding has no near-ties that float
    noise (batch shape, padding) could flip.
    """
    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.5,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    return wrap_model(model, tok, "tiny-llama")


def tiny_fit_config() -> FitConfig:
    return FitConfig.from_overrides(dict(TINY_FIT))


def slow_fit(
    lm: LoadedModel,
    history: Sequence[HistoryItem],
    config: FitConfig | None = None,
    *,
    cache: bool | Path = True,
    progress: Progress | None = None,
) -> FitResult:
    """``fit_user`` after a delay (to kill a server mid-fit), read at each call from the file named by
    ``CHAMELEON_TEST_FIT_DELAY_FILE`` (seconds; 0 if unset or missing)."""
    if progress:
        progress("waiting")
    delay_file = os.environ.get("CHAMELEON_TEST_FIT_DELAY_FILE")
    try:
        delay = float(Path(delay_file).read_text()) if delay_file else 0.0
    except (OSError, ValueError):
        delay = 0.0
    time.sleep(delay)
    return fit_user(lm, history, config, cache=cache, progress=progress)


def failing_fit(
    lm: LoadedModel,
    history: Sequence[HistoryItem],
    config: FitConfig | None = None,
    *,
    cache: bool | Path = True,
    progress: Progress | None = None,
) -> FitResult:
    """Fail for users whose history mentions ``FAIL``; otherwise the real fit."""
    if any("FAIL" in it.input for it in history):
        raise FitError("this history was built to fail")
    return fit_user(lm, history, config, cache=cache, progress=progress)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (``with ThreadServer(app) as url:``)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_for_job(
    client: Any, job_id: str, *, timeout: float = 60.0, until: Sequence[str] = ()
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job ends or reaches a status in ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in (*until, "succeeded", "failed", "interrupted") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
