"""Per-user DPO baseline: a LoRA adapter trained by DPO on Chameleon's pairs under Chameleon's time budget.

The paper compares Chameleon with fine-tuning each user by DPO under the same time budget. Method
``dpo`` does that here, as fairly as one CPU allows:

* **Same data.** It reuses the user's Chameleon fit (:class:`~chameleon_llm.evaluation.methods.FitStore`)
  and trains on exactly the pairs the edit was fitted on: chosen = the personalized response, rejected =
  the neutral one, prompt = the pair's query through the chat template, then the fit's answer prefix
  if it has one (as :func:`chameleon_llm.fit.pair_texts` renders them). Sequences are cut to the
  fit's ``activations.max_length`` tokens, keeping the end of the query as Chameleon's activations do.
* **Same time.** Training stops when the wall-clock budget, ``budget`` × that user's Chameleon fit
  seconds, is spent: a new optimizer step starts only if the time used so far plus the last step's
  duration fits (the first step always runs, so a budget shorter than one step overshoots by that
  step; ``train_seconds`` records what was used). The clock starts before the trainer is built, so
  tokenization and adapter set-up count. ``steps`` replaces the budget by a fixed step count;
  ``max_seconds`` caps the budget.
* **One trajectory for several budgets.** Variants of one run that differ only in their budget (``dpo``,
  ``dpo-4x``, ``dpo-16x``) train once per user, to the largest budget, and copy the adapter at the
  step end where each smaller budget's run would have stopped: the same adapter a separate run
  makes (fixed seed and data order, constant learning rate; tested), for 16× instead of 21× the time.
* **Same answering.** Queries are answered through
  :func:`~chameleon_llm.evaluation.prompting.answer_messages` with the adapter active, then the
  adapter is removed and the model is restored exactly (weights, ``requires_grad``, train/eval mode,
  dropout, patched ``forward``, RNG state); the adapter's weights are kept in the user's state only.

Training uses ``trl``'s :class:`~trl.DPOTrainer` (sigmoid DPO loss, β = 0.1) with a ``peft`` LoRA
adapter; the reference model is the base model with the adapter disabled. LoRA: rank 8, α = 16, no
dropout, on the attention projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; the family's
peft default where those names do not exist). AdamW, constant learning rate 5e-4, 2 pairs per step,
no gradient checkpointing. These are fixed in advance, not tuned on any query.

Cost recorded per user (``UserState.info``): the budget, ``train_seconds``, ``steps``, the training
losses, ``lora_bytes`` (the size of the adapter's ``adapter_model.safetensors`` as ``peft`` saves it)
and ``edit_bytes`` (the Chameleon edit's safetensors). ``UserState.fit_seconds`` is what DPO costs on
its own: building the pairs (the fit's select + insights + pairs stages; 0 when they came from the
pair cache) plus training.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chameleon_llm.edit import UserEdit
from chameleon_llm.lamp.data import LampQuery
from chameleon_llm.models import LoadedModel, chat_prompt
from chameleon_llm.pairs import Pair

from .methods import Chameleon, History, MethodContext, MethodUnavailable, UserFit, UserState, register_method
from .prompting import answer_messages

log = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
PAIR_STAGES = ("select", "insights", "pairs")  # FitResult.timings keys that build the pairs
INSTALL_HINT = (
    "pip install --no-deps trl==1.16.0 peft==0.21.2 datasets==5.2.0 pyarrow==26.0.1 pandas==3.1.1 "
    "dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0  (or `make install`)"
)


@dataclass(frozen=True)
class DPOOptions:
    """How one ``dpo`` variant trains. Fixed per registered name (the name is in the checkpoint hash)."""

    budget: float = 1.0  # wall-clock budget as a multiple of the user's Chameleon fit seconds
    steps: int | None = None  # a fixed number of optimizer steps instead of the time budget
    max_seconds: float | None = None  # an absolute cap on the budget (None: no cap)
    rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    learning_rate: float = 5e-4
    beta: float = 0.1
    batch_size: int = 2
    max_length: int | None = None  # tokens per prompt+response; None: the fit's activations.max_length
    seed: int = 0


def require_dpo_packages() -> None:
    """Import ``trl``, ``peft`` and ``datasets`` or raise :class:`MethodUnavailable` saying how to install."""
    missing = []
    for name in ("trl", "peft", "datasets"):
        try:
            __import__(name)
        except Exception as exc:  # ImportError, or an incompatibility raised at import
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing:
        raise MethodUnavailable(
            f"dpo: cannot import {', '.join(missing)}. Install the 'dpo' extra with: {INSTALL_HINT}"
        )
    try:
        from trl import DPOConfig, DPOTrainer  # noqa: F401
    except Exception as exc:
        raise MethodUnavailable(
            f"dpo: trl's DPOTrainer cannot be imported ({type(exc).__name__}: {exc}). {INSTALL_HINT}"
        ) from exc


# --------------------------------------------------------------------------- data


def _n_tokens(lm: LoadedModel, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _keep_last_tokens(lm: LoadedModel, text: str, n: int) -> str:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    return str(lm.tokenizer.decode(ids[len(ids) - max(n, 0) :], skip_special_tokens=True))


def _keep_first_tokens(lm: LoadedModel, text: str, n: int) -> str:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    return str(lm.tokenizer.decode(ids[: max(n, 0)], skip_special_tokens=True))


def dpo_examples(
    lm: LoadedModel, pairs: Sequence[Pair], max_length: int, answer_prefix: str = ""
) -> list[dict[str, str]]:
    """DPO rows from pairs: ``prompt`` (chat template), ``chosen`` = personal, ``rejected`` = neutral.

    As :func:`chameleon_llm.fit.pair_texts`: the query through the chat template, then the answer prefix
    (when the fit uses one) and the response after a space. Pairs whose two responses are identical (no
    preference) or empty are dropped. A response is cut to half of ``max_length`` tokens; the query is
    cut from the left so prompt + longer response + end-of-turn fit ``max_length`` (Chameleon's
    activations keep the end of the text the same way).
    """
    rows = []
    overhead = _n_tokens(lm, chat_prompt(lm, "") + answer_prefix) + 3  # template, prefix, space, eos, slack
    for p in pairs:
        chosen, rejected = p.personal.strip(), p.neutral.strip()
        if p.source == "context" or not chosen or not rejected or chosen == rejected:
            continue  # context pairs differ in the prompt, not in a response: nothing to prefer
        chosen = _keep_first_tokens(lm, chosen, max_length // 2)
        rejected = _keep_first_tokens(lm, rejected, max_length // 2)
        room = max_length - overhead - max(_n_tokens(lm, chosen), _n_tokens(lm, rejected))
        query = _keep_last_tokens(lm, p.query, max(room, 1))
        sep = " " if answer_prefix else ""
        rows.append(
            {
                "prompt": chat_prompt(lm, query) + answer_prefix,
                "chosen": sep + chosen,
                "rejected": sep + rejected,
            }
        )
    return rows


# --------------------------------------------------------------------------- model state


@dataclass
class _ModelSnapshot:
    """What DPO training or an injected adapter may change on a model, to put back afterwards."""

    requires_grad: dict[str, bool]
    training: dict[str, bool]
    dropout: dict[str, float]
    instance_attrs: set[str]
    saved_attrs: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    rng: tuple[Any, Any, Any]

    @classmethod
    def take(cls, model: torch.nn.Module) -> _ModelSnapshot:
        return cls(
            requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
            training={n: m.training for n, m in model.named_modules()},
            dropout={n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)},
            instance_attrs=set(vars(model)),
            saved_attrs={k: vars(model)[k] for k in ("model_tags",) if k in vars(model)},
            configs={k: dict(vars(c)) for k, c in _configs(model).items()},
            rng=(torch.random.get_rng_state(), np.random.get_state(), random.getstate()),
        )

    def restore(self, model: torch.nn.Module) -> None:
        # attributes set on the instance (trl patches ``forward``; tags, peft flags) go; saved ones return
        for name in set(vars(model)) - self.instance_attrs:
            if not name.startswith("_") or name in ("_hf_peft_config_loaded",):
                delattr(model, name)
        for name, value in self.saved_attrs.items():
            setattr(model, name, value)
        for key, config in _configs(model).items():  # the trainer sets use_cache=False, among others
            before = self.configs.get(key, {})
            for attr in set(vars(config)) - set(before):
                delattr(config, attr)
            for attr, value in before.items():
                if vars(config).get(attr, _MISSING) is not value:
                    setattr(config, attr, value)
        modules = dict(model.named_modules())
        for name, flag in self.training.items():
            if name in modules:
                modules[name].training = flag
        for name, p in self.dropout.items():
            if name in modules:
                modules[name].p = p
        for name, param in model.named_parameters():
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])
        torch.random.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])


_MISSING = object()


def _configs(model: torch.nn.Module) -> dict[str, Any]:
    out = {}
    for key in ("config", "generation_config"):
        value = getattr(model, key, None)
        if value is not None and hasattr(value, "__dict__"):
            out[key] = value
    return out


def lora_targets(model: torch.nn.Module, wanted: Sequence[str]) -> list[str] | None:
    """The ``wanted`` module names present in ``model`` (None: let peft pick the family's default)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [w for w in wanted if w in leaves]
    return found or None


def _lora_config(model: torch.nn.Module, opts: DPOOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=opts.rank,
        lora_alpha=opts.lora_alpha,
        lora_dropout=0.0,
        target_modules=lora_targets(model, opts.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _unwrap(peft_model: Any, model: torch.nn.Module, snapshot: _ModelSnapshot) -> None:
    """Remove every LoRA layer (the base layers come back unmerged) and restore ``model``'s state."""
    try:
        if peft_model is not None:
            peft_model.unload()
    finally:
        snapshot.restore(model)


@dataclass
class DPOAdapter:
    """A trained adapter (weights kept off the model) and what training cost."""

    config: Any  # peft.LoraConfig
    weights: dict[str, torch.Tensor]
    steps: int
    train_seconds: float
    budget_seconds: float | None
    lora_bytes: int
    losses: list[float] = field(default_factory=list)
    targets: list[str] | None = None
    max_step_seconds: float = 0.0
    snapshots: dict[str, DPOAdapter] = field(default_factory=dict)  # smaller budgets, same trajectory


class _Budget:
    """Trainer callback: per-step timing and losses; stops before a step that would overrun the budget.

    ``marks`` (name -> seconds, each at most the budget) are smaller budgets of the same trajectory: at
    the step end where a run with that budget would have stopped, the adapter's weights are copied.
    """

    def __init__(self, start: float, budget: float | None, marks: Mapping[str, float] | None = None) -> None:
        self.start, self.budget = start, budget
        self.step_start = start
        self.steps = 0
        self.losses: list[float] = []
        self.max_step = 0.0
        self.pending = dict(marks or {})
        self.taken: dict[str, tuple[dict[str, torch.Tensor], int, float, float, list[float]]] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.step_start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        self.steps += 1
        self.max_step = max(self.max_step, now - self.step_start)
        over = (now - self.start) + (now - self.step_start)
        for name, seconds in list(self.pending.items()):
            if over > seconds and kw.get("model") is not None:
                self.snapshot(name, kw["model"], now)
        if self.budget is not None and over > self.budget:
            control.should_training_stop = True

    def snapshot(self, name: str, model: Any, now: float) -> None:
        from peft import get_peft_model_state_dict

        weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        self.taken[name] = (weights, self.steps, now - self.start, self.max_step, list(self.losses))
        self.pending.pop(name, None)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs and "train_loss" not in logs:
            self.losses.append(round(float(logs["loss"]), 5))
            for name, (w, steps, t, mx, losses) in self.taken.items():
                if len(losses) < steps:  # the loss of a snapshot's last step is logged after its step end
                    self.taken[name] = (w, steps, t, mx, self.losses[:steps])


def _callback(budget: _Budget) -> Any:
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            budget.on_step_begin(*a, **kw)

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            budget.on_step_end(*a, **kw)

        def on_log(self, *a: Any, **kw: Any) -> None:
            budget.on_log(*a, **kw)

    return BudgetCallback()


def train_dpo(
    lm: LoadedModel,
    examples: Sequence[Mapping[str, str]],
    opts: DPOOptions,
    budget_seconds: float | None,
    *,
    also_at: Mapping[str, float] | None = None,
) -> DPOAdapter:
    """Train a LoRA adapter with trl's DPOTrainer; return its weights. ``lm.model`` is restored exactly.

    ``budget_seconds`` bounds the wall-clock time (see the module docstring) unless ``opts.steps`` is set.
    ``also_at`` (name -> seconds ≤ the budget): the adapters a run with each of those smaller budgets
    would have produced, taken from this one trajectory, in ``.snapshots`` (same seed, data order and
    constant learning rate, so a separate shorter run makes the same steps).
    """
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from peft import get_peft_model_state_dict
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    start = time.perf_counter()
    model = lm.model
    budget = None if opts.steps is not None else budget_seconds
    config = _lora_config(model, opts)
    marks = {n: b for n, b in (also_at or {}).items() if budget is not None and b > 0}
    if budget is not None:
        marks = {n: min(b, budget) for n, b in marks.items()}
    if not examples or (budget is not None and budget <= 0) or opts.steps == 0:
        empty = DPOAdapter(config, {}, 0, round(time.perf_counter() - start, 3), budget, 0, [], None)
        empty.snapshots = {n: replace(empty, budget_seconds=b) for n, b in (also_at or {}).items()}
        return empty
    disable_progress_bar()
    snapshot = _ModelSnapshot.take(model)
    tracker = _Budget(start, budget, marks)
    peft_model = None
    try:
        with tempfile.TemporaryDirectory(prefix="chameleon-dpo-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = DPOConfig(
                output_dir=tmp,
                use_cpu=model.device.type == "cpu",
                bf16=False,
                fp16=False,
                max_steps=opts.steps if opts.steps is not None else 1_000_000,
                per_device_train_batch_size=min(opts.batch_size, len(examples)),
                gradient_accumulation_steps=1,
                learning_rate=opts.learning_rate,
                lr_scheduler_type="constant",
                warmup_steps=0,
                weight_decay=0.0,
                beta=opts.beta,
                loss_type=["sigmoid"],
                max_length=None,  # dpo_examples already fit every row in opts.max_length
                gradient_checkpointing=False,
                precompute_ref_log_probs=False,
                report_to="none",
                save_strategy="no",
                logging_steps=1,
                disable_tqdm=True,
                dataloader_num_workers=0,
                seed=opts.seed,
                data_seed=opts.seed,
            )
            trainer = DPOTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list([dict(e) for e in examples]),
                processing_class=lm.tokenizer,
                peft_config=config,
                callbacks=[_callback(tracker)],
            )
            for cb in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(cb)
            peft_model = trainer.model
            trained: Any = peft_model
            trainer.train()
            train_seconds = time.perf_counter() - start
            for name in list(tracker.pending):  # training ended before that budget was spent
                tracker.snapshot(name, trained, time.perf_counter())
            trained.eval()
            weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trained).items()}
            trained.save_pretrained(tmp + "/adapter")
            lora_bytes = (Path(tmp) / "adapter" / "adapter_model.safetensors").stat().st_size
            del trainer
    finally:
        _unwrap(peft_model, model, snapshot)
    final = DPOAdapter(
        config,
        weights,
        tracker.steps,
        round(train_seconds, 3),
        budget,
        int(lora_bytes),
        tracker.losses,
        sorted(config.target_modules) if config.target_modules else None,
        round(tracker.max_step, 3),
    )
    for name, (w, steps, seconds, max_step, losses) in tracker.taken.items():
        final.snapshots[name] = replace(
            final,
            weights=w,
            steps=steps,
            train_seconds=round(seconds, 3),
            budget_seconds=(also_at or {})[name],
            losses=losses,
            max_step_seconds=round(max_step, 3),
            snapshots={},
        )
    for name, seconds in (also_at or {}).items():
        if name not in final.snapshots:  # a budget of 0 s: no step, the identity adapter
            final.snapshots[name] = replace(
                final, weights={}, steps=0, train_seconds=0.0, budget_seconds=seconds, losses=[], snapshots={}
            )
    return final


@contextmanager
def adapter_applied(lm: LoadedModel, adapter: DPOAdapter | None) -> Iterator[None]:
    """Inject the adapter into ``lm.model`` for the block, then remove it and restore the model exactly."""
    if adapter is None or not adapter.weights:
        yield
        return
    from peft import get_peft_model, set_peft_model_state_dict

    model = lm.model
    snapshot = _ModelSnapshot.take(model)
    peft_model = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, adapter.config)
            result: Any = set_peft_model_state_dict(peft_model, adapter.weights)
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            raise RuntimeError(f"adapter weights do not match the model: {unexpected[:3]}")
        peft_model.eval()
        with torch.no_grad():
            yield
    finally:
        _unwrap(peft_model, model, snapshot)


# --------------------------------------------------------------------------- the method


class DPO(Chameleon):
    """Per-user LoRA trained by DPO on the user's Chameleon pairs under a multiple of its fit time."""

    name = "dpo"
    uses_fit = True
    options = DPOOptions()

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        require_dpo_packages()
        _SIBLINGS.setdefault(id(ctx), []).append(self)

    def edit(self, state: UserState) -> UserEdit | None:
        return None

    def train_key(self) -> str:
        """What the training depends on besides the budget (variants equal here share a trajectory)."""
        opts = asdict(self.options)
        for k in ("budget", "max_seconds"):
            opts.pop(k)
        return repr(sorted(opts.items()))

    def trajectory_group(self) -> list[DPO]:
        """The time-budgeted DPO methods of this run that differ from this one only in their budget."""
        if self.options.steps is not None:
            return [self]
        siblings = [m for m in _SIBLINGS.get(id(self.ctx), []) if m.ctx is self.ctx]
        group = {m.name: m for m in siblings if m.options.steps is None and m.train_key() == self.train_key()}
        group[self.name] = self
        return list(group.values())

    def adapter_for(self, fit: UserFit, examples: list[dict[str, str]]) -> tuple[DPOAdapter, str | None]:
        """This method's adapter: trained once per user for the whole group to its largest budget, the
        smaller budgets copied along the way (see :func:`train_dpo`); later members reuse the copies."""
        key = (fit.key, self.train_key())
        cached = _TRAJECTORIES.get(key)
        if cached is not None and self.name in cached[1]:
            return cached[1][self.name], cached[0]
        budgets = {m.name: m.budget_seconds(fit.fit_seconds) for m in self.trajectory_group()}
        if self.options.steps is not None or len(budgets) == 1:
            return train_dpo(self.ctx.lm, examples, self.options, budgets[self.name]), None
        top = max(budgets, key=lambda n: budgets[n] or 0.0)
        others = {n: float(b or 0.0) for n, b in budgets.items() if n != top}
        final = train_dpo(self.ctx.lm, examples, self.options, budgets[top], also_at=others)
        _TRAJECTORIES.clear()  # one user at a time: methods of a user run back to back
        _TRAJECTORIES[key] = (top, {top: final, **final.snapshots})
        return _TRAJECTORIES[key][1][self.name], top

    def budget_seconds(self, fit_seconds: float) -> float | None:
        opts = self.options
        if opts.steps is not None:
            return None
        budget = opts.budget * fit_seconds
        return min(budget, opts.max_seconds) if opts.max_seconds is not None else budget

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        state = super().prepare_user(user_id, profile_history)
        fit: UserFit = state.payload
        opts = self.options
        pair_s = sum(float(fit.timings.get(k, 0.0)) for k in PAIR_STAGES)
        max_length = opts.max_length or self.ctx.fit_config.activations.max_length
        lm = self.ctx.lm
        prefix = str(getattr(self.ctx.fit_config.pairs, "answer_prefix", "") or "")
        examples = dpo_examples(lm, fit.pairs, max_length, prefix)
        budget = self.budget_seconds(fit.fit_seconds)
        info: dict[str, Any] = {
            **state.info,
            "dpo_options": asdict(opts),
            "chameleon_fit_seconds": fit.fit_seconds,
            "pair_seconds": round(pair_s, 3),
            "budget_seconds": None if budget is None else round(budget, 3),
            "n_examples": len(examples),
            "edit_bytes": len(fit.edit.to_bytes()) if fit.edit is not None else 0,
        }
        if not examples:
            info.update(
                steps=0,
                train_seconds=0.0,
                lora_bytes=0,
                dpo="no usable pairs (none, identical responses, or 'context' pairs, which have no "
                "responses to prefer); answered by the base model",
            )
            return UserState(user_id, round(pair_s, 3), info, None)
        adapter, trajectory = self.adapter_for(fit, examples)
        if trajectory is not None:
            info["trajectory"] = f"one training run per user for {trajectory}; this budget copied from it"
        info.update(
            steps=adapter.steps,
            train_seconds=adapter.train_seconds,
            lora_bytes=adapter.lora_bytes,
            lora_targets=adapter.targets,
            max_step_seconds=adapter.max_step_seconds,
            losses=adapter.losses,
        )
        return UserState(user_id, round(pair_s + adapter.train_seconds, 3), info, adapter)

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]:
        msgs = self.messages(queries)
        with adapter_applied(self.ctx.lm, state.payload):
            return answer_messages(self.ctx.lm, self.ctx.spec, msgs, self.ctx.settings, None)


def register_dpo_method(name: str, options: DPOOptions) -> type[DPO]:
    """Register a ``dpo`` variant under ``name`` (a new name for every new set of options)."""
    cls = type(f"DPO_{name.replace('-', '_')}", (DPO,), {"name": name, "options": options})
    register_method(name)(cls)
    return cls


_SIBLINGS: dict[int, list[DPO]] = {}  # id(MethodContext) -> the DPO methods created with it
_TRAJECTORIES: dict[tuple[str, str], tuple[str, dict[str, DPOAdapter]]] = {}

register_method("dpo")(DPO)
register_dpo_method("dpo-4x", DPOOptions(budget=4.0))
register_dpo_method("dpo-16x", DPOOptions(budget=16.0))
register_dpo_method("dpo-steps", DPOOptions(steps=32))
