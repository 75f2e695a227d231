"""Shared fixtures: tiny random models of several families, a local tokenizer, random UserEdits.

Everything is built in memory from configs (no download, no network) and seeded, so each test
file runs in seconds. The models are float32 with a large ``initializer_range`` so that greedy
decoding is not dominated by near-ties between logits.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from chameleon_llm.config import EditConfig
from chameleon_llm.edit import UserEdit
from chameleon_llm.models import LoadedModel, wrap_model

FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2", "phi3")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I love reading science fiction novels on rainy evenings.",
    "Please write a short review of the new phone.",
    "My favourite films are quiet dramas with strong characters.",
    "Summarize the article about climate policy in two sentences.",
    "User: what should I cook tonight? Assistant: a vegetable curry.",
    "Translate this paragraph into plain English, please.",
    "The meeting moved to Thursday at ten in the morning.",
]
SPECIAL = ["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

HIDDEN = 32
N_LAYERS = 3
INIT_RANGE = 0.25


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained in memory on a few sentences.

    Every token decodes to a whole word, so two generations have the same text exactly when they
    have the same tokens (byte-level pieces could decode to the same replacement characters).
    """
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(family: str, vocab: int, pad: int, eos: int) -> object:
    common = {
        "vocab_size": vocab,
        "pad_token_id": pad,
        "eos_token_id": eos,
        "bos_token_id": eos,
        "initializer_range": INIT_RANGE,
        "tie_word_embeddings": False,
    }
    llama_like = {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **common,
    }
    if family == "llama":
        return LlamaConfig(**llama_like)
    if family == "qwen2":
        return Qwen2Config(**llama_like)
    if family == "mistral":
        return MistralConfig(**llama_like, sliding_window=None)
    if family == "gemma":
        return GemmaConfig(**llama_like, head_dim=HIDDEN // 4)
    if family == "phi3":
        return Phi3Config(**llama_like)
    if family == "gpt2":
        return GPT2Config(
            n_embd=HIDDEN,
            n_layer=N_LAYERS,
            n_head=4,
            n_positions=256,
            **common,
        )
    raise ValueError(family)


_MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "mistral": MistralForCausalLM,
    "gemma": GemmaForCausalLM,
    "phi3": Phi3ForCausalLM,
    "gpt2": GPT2LMHeadModel,
}


def build_lm(
    family: str, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """A tiny random causal LM of ``family``, wrapped for Chameleon."""
    seed_everything(seed)
    cfg = _config(family, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = _MODEL_CLASSES[family](cfg).to(dtype)
    return wrap_model(model, tokenizer, f"tiny-{family}")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one torch thread: tiny models and small optimizations run several times
    faster (thread start-up dominates, and the machine may be shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_TINY_FIXTURES = frozenset({"tokenizer", "tiny_models", "lm", "llama", "make_edit"})


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(request: pytest.FixtureRequest) -> None:
    """Every test using the tiny models runs on one thread (other tests keep torch's default)."""
    if _TINY_FIXTURES.intersection(request.fixturenames) and not request.node.get_closest_marker("slow"):
        request.getfixturevalue("one_thread")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tokenizer: PreTrainedTokenizerFast) -> dict[str, LoadedModel]:
    return {family: build_lm(family, tokenizer, seed=i) for i, family in enumerate(FAMILIES)}


@pytest.fixture(params=FAMILIES)
def lm(request: pytest.FixtureRequest, tiny_models: dict[str, LoadedModel]) -> LoadedModel:
    """One tiny model per family (the test runs once for each)."""
    return tiny_models[request.param]


@pytest.fixture
def llama(tiny_models: dict[str, LoadedModel]) -> LoadedModel:
    return tiny_models["llama"]


EditFactory = Callable[..., UserEdit]


def random_edit(
    lm: LoadedModel,
    *,
    seed: int = 0,
    layers: tuple[int, ...] | None = None,
    rank: int = 2,
    hook_point: str = "mlp",
    **strengths: object,
) -> UserEdit:
    """A random UserEdit for ``lm``: orthonormal personal bases and unit neutral vectors."""
    strengths.setdefault("mode", "project")  # these tests exercise the projection formula unless told
    gen = torch.Generator().manual_seed(seed)
    layers = layers if layers is not None else (0, lm.num_layers - 1)
    d = lm.hidden_size
    personal = torch.stack(
        [torch.linalg.qr(torch.randn(d, rank, generator=gen))[0].T for _ in layers]
    ).contiguous()
    neutral = torch.randn(len(layers), d, generator=gen)
    neutral = neutral / neutral.norm(dim=-1, keepdim=True)
    return UserEdit(
        layers=tuple(layers),
        personal=personal,
        neutral=neutral,
        hook_point=hook_point,  # type: ignore[arg-type]
        strengths=EditConfig(**strengths),  # type: ignore[arg-type]
        model=dict(lm.identity),
        insights={"personal": f"user {seed} likes brevity", "neutral": "generic answers"},
        stats={"n_pairs": 4},
        config={"seed": seed},
        provenance={"created_at": "2025-01-01T00:00:00+00:00"},
    )


@pytest.fixture
def make_edit() -> EditFactory:
    """``make_edit(lm, seed=..., layers=..., rank=..., hook_point=..., alpha=..., ...)``."""
    return random_edit
