"""Evaluation methods behind one protocol: ``prepare_user`` once per user, then ``answer`` its queries.

Methods never see golds: ``prepare_user`` gets the user's fit profile (see
:func:`chameleon_llm.evaluation.runner.fit_profile`) as history items, ``answer`` gets the queries
(id, input, profile). Every model-based method answers through
:func:`chameleon_llm.evaluation.prompting.answer_messages` with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chameleon_llm.config import FitConfig
from chameleon_llm.edit import EditFileError, UserEdit, atomic_write_text
from chameleon_llm.fit import FitError, FitResult, fit_user, pair_texts
from chameleon_llm.history import (
    DEFAULT_MAX_CHARS,
    HistoryError,
    HistoryItem,
    history_fingerprint,
    parse_history,
)
from chameleon_llm.lamp.data import LampQuery
from chameleon_llm.lamp.metrics import aggregate, per_query_scores
from chameleon_llm.lamp.tasks import TaskSpec, scored_prediction
from chameleon_llm.models import LoadedModel
from chameleon_llm.pairs import Pair

from .prompting import ResolvedSettings, answer_messages, rag_message, retrieve
from .stats import higher_is_better

log = logging.getLogger(__name__)

History = Sequence[Mapping[str, Any]]


class MethodUnavailable(RuntimeError):
    """A method cannot run here (an optional package is missing or does not work); says why."""


@dataclass
class UserState:
    """What a method prepared for one user. ``fit_seconds`` is the per-user preparation cost."""

    user_id: str
    fit_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    payload: Any = None


class Method(Protocol):
    """An evaluation method: per-user preparation, then answers (raw text) for that user's queries."""

    name: str
    uses_model: bool
    uses_fit: bool

    def prepare_user(self, user_id: str, profile_history: History) -> UserState: ...

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]: ...


@dataclass
class MethodContext:
    """What methods share in one run: the task, settings, the (lazily loaded) model and the fits."""

    spec: TaskSpec
    settings: ResolvedSettings
    fit_config: FitConfig
    load_lm: Callable[[], LoadedModel]
    fits: FitStore | None = None
    rag_fits: FitStore | None = None  # fits of rag-framed histories (long inputs kept)
    frame: Callable[[str, str], list[dict[str, Any]]] | None = None  # (user, framing) -> fit history

    @property
    def lm(self) -> LoadedModel:
        return self.load_lm()


MethodFactory = Callable[[MethodContext], Method]
METHODS: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Register a method factory under ``name`` (used by ``--methods``)."""

    def deco(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = factory
        return factory

    return deco


def create_method(name: str, ctx: MethodContext) -> Method:
    """Instantiate a registered method; raises :class:`MethodUnavailable` when it cannot run here."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](ctx)


# --------------------------------------------------------------------------- fitted users


def history_items(profile_history: History, max_chars: int = DEFAULT_MAX_CHARS) -> list[HistoryItem]:
    """Profile history as core history items (items with an empty output are dropped; longer texts
    are cut at ``max_chars``)."""
    usable = [dict(h) for h in profile_history if str(h.get("output", "")).strip()]
    if not usable:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long items are truncated by the core; that is expected here
        return parse_history(usable, source="profile", max_chars=max_chars)


@dataclass
class UserFit:
    """One user's fitted edit (or why there is none) and the pairs it was fitted on."""

    key: str
    edit: UserEdit | None
    pairs: list[Pair]
    fit_seconds: float
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"edit_key": self.key, "n_pairs": len(self.pairs)}
        if self.edit is not None:
            out.update(edit_id=self.edit.id, layers=list(self.edit.layers))
        if self.error:
            out["fit_error"] = self.error
        return out


FitFn = Callable[..., FitResult]


class FitStore:
    """Fits one edit per (user, history, model, FitConfig), cached in ``root`` for resume.

    Files: ``<key>.safetensors`` (the edit) and ``<key>.json`` (pairs, timings, error), both written
    atomically, the JSON last; a present JSON means the fit is done. The core's pair cache is used too
    (``pair_cache``), so a refit with other direction/edit settings skips the text generation.
    History texts are cut at ``max_item_chars`` (raised for inputs carrying retrieved items).
    """

    def __init__(
        self,
        load_lm: Callable[[], LoadedModel],
        config: FitConfig,
        root: Path | None,
        *,
        fit_fn: FitFn = fit_user,
        pair_cache: bool | Path = True,
        max_item_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        self.load_lm, self.config, self.root = load_lm, config, root
        self.max_item_chars = max_item_chars
        self.fit_fn, self.pair_cache = fit_fn, pair_cache
        self._memory: dict[str, UserFit] = {}
        self.fits_run = 0

    def key(self, user_id: str, items: Sequence[HistoryItem]) -> str:
        lm = self.load_lm()
        digest = hashlib.sha256(
            json.dumps(
                [lm.config_hash, self.config.for_history(len(items)).to_json(), history_fingerprint(items)]
            ).encode()
        ).hexdigest()[:16]
        return f"{safe_name(user_id)}-{digest}"

    def get(self, user_id: str, profile_history: History) -> UserFit:
        items = history_items(profile_history, self.max_item_chars)
        key = self.key(user_id, items)
        if key in self._memory:
            return self._memory[key]
        fit = self._load(key) or self._fit(key, items)
        self._memory = {key: fit}  # keep one user: methods of a user run back to back
        return fit

    def _paths(self, key: str) -> tuple[Path, Path] | None:
        if self.root is None:
            return None
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def _load(self, key: str) -> UserFit | None:
        paths = self._paths(key)
        if paths is None or not paths[1].is_file():
            return None
        meta = json.loads(paths[1].read_text(encoding="utf-8"))
        edit = None
        if meta.get("edit_id"):
            try:
                edit = UserEdit.load(paths[0])
            except EditFileError as exc:
                log.warning("refitting %s: %s", key, exc)
                return None
        return UserFit(
            key,
            edit,
            [Pair(**p) for p in meta.get("pairs", [])],
            float(meta["fit_seconds"]),
            meta.get("error"),
            meta.get("timings", {}),
        )

    def _fit(self, key: str, items: Sequence[HistoryItem]) -> UserFit:
        lm = self.load_lm()
        start = time.perf_counter()
        try:
            if not items:
                raise FitError("the user's fit profile is empty")
            result = self.fit_fn(lm, items, self.config, cache=self.pair_cache)
            fit = UserFit(key, result.edit, list(result.pairs), 0.0, None, dict(result.timings))
        except (FitError, HistoryError) as exc:
            fit = UserFit(key, None, [], 0.0, f"{type(exc).__name__}: {exc}")
        fit.fit_seconds = round(time.perf_counter() - start, 3)
        self.fits_run += 1
        paths = self._paths(key)
        if paths is not None:
            if fit.edit is not None:
                fit.edit.save(paths[0])
            meta = {
                "key": key,
                "edit_id": fit.edit.id if fit.edit else None,
                "fit_seconds": fit.fit_seconds,
                "timings": fit.timings,
                "error": fit.error,
                "pairs": [asdict(p) for p in fit.pairs],
            }
            atomic_write_text(paths[1], json.dumps(meta, indent=1, ensure_ascii=False))
        return fit


def safe_name(text: str) -> str:
    """A file-name-safe form of an id (a short hash is added when characters were replaced)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]
    if cleaned != text:
        cleaned += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return cleaned


# --------------------------------------------------------------------------- methods


class _ModelMethod:
    """Shared answering: the same prompts, decoding and limits for every model-based method."""

    name = "model"
    uses_model = True
    uses_fit = False
    rag = False

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx

    def messages(self, queries: Sequence[LampQuery], rag: bool | None = None) -> list[str]:
        """The user messages: the inputs, with retrieved profile items when ``rag`` (default: the
        method's own ``rag``)."""
        if not (self.rag if rag is None else rag):
            return [q.input for q in queries]
        return [
            rag_message(self.ctx.lm, self.ctx.spec, q.input, q.profile, self.ctx.settings) for q in queries
        ]

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        return UserState(user_id)

    def edit(self, state: UserState) -> UserEdit | None:
        return None

    def steering(self, state: UserState) -> AbstractContextManager[Any]:
        return nullcontext()

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]:
        msgs = self.messages(queries)
        with self.steering(state):
            return answer_messages(self.ctx.lm, self.ctx.spec, msgs, self.ctx.settings, self.edit(state))


@register_method("base")
class Base(_ModelMethod):
    """The task input alone."""

    name = "base"


@register_method("rag")
class Rag(_ModelMethod):
    """The input plus the k most relevant items of the query's profile (BM25, LaMP's prompt)."""

    name = "rag"
    rag = True


@register_method("chameleon")
class Chameleon(_ModelMethod):
    """The user's Chameleon edit (fitted once from the fit profile) applied while answering."""

    name = "chameleon"
    uses_fit = True

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        if self.ctx.fits is None:
            raise RuntimeError("chameleon needs a FitStore in its context")
        fit = self.ctx.fits.get(user_id, profile_history)
        return UserState(user_id, fit.fit_seconds, fit.info(), fit)

    def edit(self, state: UserState) -> UserEdit | None:
        fit: UserFit = state.payload
        return fit.edit  # None after a failed fit: the user is answered unedited (counted in the report)


@register_method("chameleon_rag")
class ChameleonRag(Chameleon):
    """The Chameleon edit and the retrieval-augmented prompt together."""

    name = "chameleon_rag"
    rag = True


@register_method("chameleon_auto")
class ChameleonAuto(Chameleon):
    """Chameleon with or without retrieval, chosen per user from the user's own profile.

    Two edits are fitted: one on the task-framed history (answered with the plain prompt, as
    ``chameleon``) and one on the rag-framed history (answered with the rag prompt, as
    ``chameleon_rag``, but fitted and calibrated in that context). Each is scored with the task's
    metric on the last ``validation_items`` profile items not used for pairs, every item asked as a
    query in its context; retrieval is used only when it scores strictly better.
    """

    name = "chameleon_auto"
    validation_items = 8

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        fits, rag_fits, frame = self.ctx.fits, self.ctx.rag_fits, self.ctx.frame
        if fits is None or rag_fits is None or frame is None:
            raise RuntimeError("chameleon_auto needs both fit stores and a framing function in its context")
        plain_h, rag_h = frame(user_id, "task"), frame(user_id, "rag")
        plain, rag = fits.get(user_id, plain_h), rag_fits.get(user_id, rag_h)
        start = time.perf_counter()
        used = {p.query for p in (*plain.pairs, *rag.pairs)}  # pair queries: cut and stripped

        def free(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
            return (
                bool(str(a.get("output", "")).strip())
                and str(a["input"])[: fits.max_item_chars].strip() not in used
                and str(b["input"])[: rag_fits.max_item_chars].strip() not in used
            )

        usable = [i for i, (a, b) in enumerate(zip(plain_h, rag_h, strict=True)) if free(a, b)]
        chosen = usable[-self.validation_items :]
        info: dict[str, Any] = {"plain": plain.info(), "rag": rag.info(), "validation_items": len(chosen)}
        use_rag = False
        if chosen:
            golds = {str(i): str(plain_h[i]["output"]).strip() for i in chosen}
            plain_score = self._score([plain_h[i]["input"] for i in chosen], plain.edit, golds)
            rag_score = self._score([rag_h[i]["input"] for i in chosen], rag.edit, golds)
            use_rag = rag_score > plain_score if higher_is_better(self.primary) else rag_score < plain_score
            info["validation"] = {"metric": self.primary, "plain": plain_score, "rag": rag_score}
        info["context"] = "rag" if use_rag else "plain"
        seconds = plain.fit_seconds + rag.fit_seconds + time.perf_counter() - start
        return UserState(user_id, round(seconds, 3), info, (use_rag, rag if use_rag else plain))

    @property
    def primary(self) -> str:
        return self.ctx.spec.metrics[0]

    def _score(self, messages: list[str], edit: UserEdit | None, golds: dict[str, str]) -> float:
        """The task's primary metric of the answers to ``messages`` (in ``golds`` order)."""
        spec = self.ctx.spec
        raw = answer_messages(self.ctx.lm, spec, messages, self.ctx.settings, edit)
        preds = {qid: scored_prediction(spec, text) for qid, text in zip(golds, raw, strict=True)}
        rows = per_query_scores(spec, preds, golds)
        return round(aggregate(spec, rows.values())[self.primary], 6)

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]:
        use_rag, fit = state.payload
        msgs = self.messages(queries, use_rag)
        return answer_messages(self.ctx.lm, self.ctx.spec, msgs, self.ctx.settings, fit.edit)


class _PeerMethod(Chameleon):
    """Steering-vector peers trained on the same pairs Chameleon builds, at the edit's layers."""

    package = ""

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        state = super().prepare_user(user_id, profile_history)
        fit: UserFit = state.payload
        if fit.edit is None or len(fit.pairs) < 2:
            state.info["peer"] = "no vector (no usable fit); answered unsteered"
            state.payload = None
            return state
        start = time.perf_counter()
        pos, neg = pair_texts(self.ctx.lm, fit.pairs, self.ctx.fit_config.pairs.answer_prefix)
        state.payload = self.train(pos, neg, list(fit.edit.layers), fit.edit.hook_point)
        train_s = time.perf_counter() - start
        state.info["train_seconds"] = round(train_s, 3)
        state.fit_seconds = round(fit.fit_seconds + train_s, 3)
        return state

    def edit(self, state: UserState) -> UserEdit | None:
        return None

    def train(self, positive: list[str], negative: list[str], layers: list[int], hook_point: str) -> Any:
        raise NotImplementedError


@register_method("steering_vectors")
class SteeringVectorsPeer(_PeerMethod):
    """``steering-vectors`` (mean difference of activations), applied with its own ``apply``."""

    name = "steering_vectors"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        try:
            import steering_vectors
        except Exception as exc:  # ImportError or an incompatibility raised at import
            raise MethodUnavailable(
                f"steering_vectors: the package 'steering-vectors' cannot be imported ({type(exc).__name__}: "
                f"{exc}). Install it with: pip install --no-deps steering-vectors==0.12.2"
            ) from exc
        self.sv = steering_vectors

    def train(self, positive: list[str], negative: list[str], layers: list[int], hook_point: str) -> Any:
        layer_type = "mlp" if hook_point == "mlp" else "decoder_block"
        lm = self.ctx.lm
        return self.sv.train_steering_vector(
            lm.model,
            lm.tokenizer,
            list(zip(positive, negative, strict=True)),
            layers=layers,
            layer_type=layer_type,
            aggregator=self.sv.mean_aggregator(),
            batch_size=self.ctx.fit_config.activations.batch_size,
        )

    def steering(self, state: UserState) -> AbstractContextManager[Any]:
        if state.payload is None:
            return nullcontext()
        return state.payload.apply(self.ctx.lm.model, multiplier=self.ctx.settings.peer_multiplier)


@register_method("repeng")
class RepengPeer(_PeerMethod):
    """``repeng`` control vectors (PCA of pair differences), applied with its ``ControlModel``."""

    name = "repeng"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        try:
            import repeng
        except Exception as exc:
            raise MethodUnavailable(
                f"repeng: the package 'repeng' cannot be imported ({type(exc).__name__}: {exc}). "
                "Install a version compatible with the pinned numpy/transformers "
                "(pip install --no-deps repeng==0.4.0)"
            ) from exc
        self.repeng = repeng

    def train(self, positive: list[str], negative: list[str], layers: list[int], hook_point: str) -> Any:
        lm = self.ctx.lm
        data = [
            self.repeng.DatasetEntry(positive=p, negative=n) for p, n in zip(positive, negative, strict=True)
        ]
        vector = self.repeng.ControlVector.train(
            lm.model, lm.tokenizer, data, hidden_layers=layers, method="pca_diff"
        )
        return vector, layers

    def steering(self, state: UserState) -> AbstractContextManager[Any]:
        if state.payload is None:
            return nullcontext()
        return self._controlled(*state.payload)

    @contextmanager
    def _controlled(self, vector: Any, layers: list[int]) -> Iterator[None]:
        lm = self.ctx.lm
        control = self.repeng.ControlModel(lm.model, layers)
        try:
            control.set_control(vector, self.ctx.settings.peer_multiplier)
            yield
        finally:
            control.reset()
            control.unwrap()


@register_method("prior")
class Prior:
    """No LLM: the most frequent label, the median rating, or the output of the most similar item.

    Each query is answered from its own profile (only that user's older items).
    """

    name = "prior"
    uses_model = False
    uses_fit = False

    def __init__(self, ctx: MethodContext) -> None:
        self.spec = ctx.spec

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        return UserState(user_id)

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]:
        return [self._one(q) for q in queries]

    def _one(self, query: LampQuery) -> str:
        spec = self.spec
        outputs = [str(item.get(spec.history_output, "")).strip() for item in query.profile]
        outputs = [o for o in outputs if o]
        if not outputs:
            return ""
        if spec.kind == "classification":
            counts = Counter(o for o in outputs if o in spec.labels)
            if not counts:
                return ""
            order = {label: i for i, label in enumerate(spec.labels)}
            return min(counts, key=lambda label: (-counts[label], order[label]))
        if spec.kind == "rating":
            values = []
            for o in outputs:
                try:
                    values.append(float(o))
                except ValueError:
                    continue
            if not values:
                return ""
            med = statistics.median(values)
            return str(int(med)) if float(med).is_integer() else str(med)
        best = retrieve(spec, query.input, query.profile, 1)
        return str(query.profile[best[0]].get(spec.history_output, "")).strip() if best else ""
