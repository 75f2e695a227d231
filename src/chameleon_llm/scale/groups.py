"""Groups of users: sentence-embedding profiles, k-means, and one edit per group from pooled pairs.

A user's profile is the mean MiniLM embedding (``input`` + ``output`` of each item, the text the
selection stage embeds) of their most recent ``max_items`` history items, re-normalized. Profiles are
clustered with seeded k-means (``n_init`` restarts); ``k`` is given, or the silhouette score picks it
over ``[k_min, k_max]``. A group's edit is :func:`chameleon_llm.fit.edit_from_pairs` on its members'
pairs (each member's pairs from :func:`chameleon_llm.fit.build_pairs`, read from a fit-many store or
the core pair cache), at most ``max_pairs`` of them, taken round-robin over members so that no member
dominates; with ``edit.calibrate`` its α/β are then chosen as for a user, by held-out log-likelihood on
the members' history items not used for pairs (round-robin, ``edit.calibration_items`` in all). A
``global`` edit on everyone's pairs serves users with no history.

Folder of one :class:`GroupModel`::

    groups.json                  groups (members, centroid, edit file/id), k scores, options
    edits/<group>.safetensors    one edit per group, plus edits/global.safetensors

A :class:`GroupSet` holds the model over all users (``all/``) and, with ``folds > 0``, one model per
fold fitted WITHOUT that fold's users (``fold-<i>/``), so every user can be evaluated as a held-out,
cold-start user (``groupset.json`` maps users to folds).

Histories built from LaMP profiles carry a framing (``"task"``: inputs wrapped in the task's
instruction, the harness's default; ``"raw"``; see :func:`chameleon_llm.lamp.profile_to_history`).
Profiles, pairs and edits all depend on it, so the set records it (``history_framing``, with the
``task``) and the harness methods refuse histories framed otherwise.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chameleon_llm.config import FitConfig
from chameleon_llm.edit import UserEdit, atomic_write_text
from chameleon_llm.embeddings import DEFAULT_EMBEDDER, Embedder, get_embedder
from chameleon_llm.fit import (
    FitError,
    _pair_cache_path,
    build_pairs,
    calibrate_edit,
    edit_from_pairs,
)
from chameleon_llm.history import HistoryItem
from chameleon_llm.insights import Insights
from chameleon_llm.lamp.tasks import TaskSpec, build_prompt, get_task
from chameleon_llm.models import LoadedModel, cache_dir
from chameleon_llm.pairs import Pair

log = logging.getLogger(__name__)

GROUPS_FORMAT = "chameleon-groups/1"
GROUPSET_FORMAT = "chameleon-groupset/1"
GLOBAL = "global"


@dataclass(frozen=True)
class GroupOptions:
    """How users are grouped and how group edits are pooled."""

    k: int | None = None  # None: chosen by silhouette over [k_min, k_max]
    k_min: int = 2
    k_max: int = 8
    n_init: int = 10
    seed: int = 0
    max_items: int = 64  # most recent history items embedded per user
    max_pairs: int = 128  # pooled pairs per group edit (round-robin over members)
    global_edit: bool = True  # also fit one edit on everyone's pairs (the 0-item fallback)
    embedder: str = DEFAULT_EMBEDDER


# --------------------------------------------------------------------------- profiles and clusters


def recent(items: Sequence[HistoryItem], n: int) -> list[HistoryItem]:
    """The ``n`` most recent items: by their ``date`` when every item has one, else the last ``n``."""
    if n <= 0:
        return []
    ordered = list(items)
    if ordered and all("date" in it.extra for it in ordered):
        ordered = sorted(ordered, key=lambda it: str(it.extra["date"]))  # stable: file order on ties
    return ordered[-n:]


def profile_embedding(embedder: Embedder, items: Sequence[HistoryItem], max_items: int = 64) -> np.ndarray:
    """Unit mean embedding of a user's most recent items; raises ValueError for an empty history."""
    chosen = recent(items, max_items)
    if not chosen:
        raise ValueError("no history item to embed")
    emb = embedder.encode([f"{it.input}\n{it.output}" for it in chosen]).mean(0).numpy().astype(np.float64)
    norm = float(np.linalg.norm(emb))
    return emb / norm if norm > 0 else emb


def history_framing_of(task: str | TaskSpec, items: Sequence[HistoryItem]) -> str | None:
    """``"task"`` when every input carries the task's instruction (as ``profile_to_history(...,
    framing="task")`` builds it), ``"raw"`` when none does, ``None`` when it cannot tell (no items,
    a mix, or a task whose profile items are never framed: LaMP-1, LaMP-7)."""
    spec = get_task(task)
    if not items or spec.name in ("LaMP_1", "LaMP_7"):
        return None
    sentinel = "\x00CHAMELEON\x00"
    prefix, _, suffix = build_prompt(spec, sentinel).partition(sentinel)
    framed = [it.input.startswith(prefix) and it.input.endswith(suffix) for it in items]
    if all(framed):
        return "task"
    return "raw" if not any(framed) else None


def choose_k(x: np.ndarray, options: GroupOptions) -> tuple[int, dict[int, float]]:
    """``options.k``, or the k with the best silhouette score; never more than the distinct profiles."""
    from sklearn.metrics import silhouette_score

    distinct = len(np.unique(np.round(x, 6), axis=0))
    if options.k is not None:
        return max(1, min(options.k, distinct)), {}
    scores: dict[int, float] = {}
    for k in range(max(2, options.k_min), min(options.k_max, distinct - 1, len(x) - 1) + 1):
        labels = _kmeans(x, k, options).labels_
        sample = 2000 if len(x) > 2000 else None
        scores[k] = round(
            float(silhouette_score(x, labels, sample_size=sample, random_state=options.seed)), 4
        )
    if not scores:
        return 1, scores
    return max(scores, key=lambda k: (scores[k], -k)), scores


def _kmeans(x: np.ndarray, k: int, options: GroupOptions) -> Any:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=options.n_init, random_state=options.seed).fit(x)


def cluster(x: np.ndarray, options: GroupOptions) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """(labels, centroids, silhouette per k tried) for unit profile vectors ``x`` (n × dim)."""
    k, scores = choose_k(x, options)
    if k == 1:
        return np.zeros(len(x), dtype=int), x.mean(0, keepdims=True), scores
    km = _kmeans(x, k, options)
    return km.labels_.astype(int), km.cluster_centers_, scores


def pool_pairs(member_pairs: Sequence[Sequence[Pair]], max_pairs: int, seed: int = 0) -> list[Pair]:
    """Up to ``max_pairs`` pairs, round-robin over members (each member's pairs shuffled, seeded)."""
    rng = random.Random(seed)
    queues = [rng.sample(list(p), len(p)) for p in member_pairs]
    out: list[Pair] = []
    depth = 0
    while len(out) < max_pairs and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)][: max_pairs - len(out)]
        depth += 1
    return out


def pool_items(member_items: Sequence[Sequence[HistoryItem]], n: int) -> list[HistoryItem]:
    """Up to ``n`` items, round-robin over members (each member's most recent first)."""
    queues = [list(reversed(items)) for items in member_items]
    out: list[HistoryItem] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return out


# --------------------------------------------------------------------------- models


@dataclass
class Group:
    id: str
    members: list[str]
    centroid: list[float]
    edit: str | None = None  # file relative to the model folder
    edit_id: str | None = None
    n_pairs: int = 0
    error: str | None = None


@dataclass
class GroupModel:
    """Groups with centroids and edits (``global`` separately); edits load lazily."""

    root: Path
    groups: list[Group]
    global_group: Group | None = None
    k_scores: dict[int, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _edits: dict[str, UserEdit] = field(default_factory=dict, repr=False)

    @property
    def members(self) -> dict[str, str]:
        return {u: g.id for g in self.groups for u in g.members}

    def group_of(self, user: str) -> Group | None:
        return next((g for g in self.groups if user in g.members), None)

    def get(self, group_id: str) -> Group:
        if group_id == GLOBAL and self.global_group is not None:
            return self.global_group
        for g in self.groups:
            if g.id == group_id:
                return g
        raise KeyError(f"no group {group_id!r} in {self.root}")

    def ranked(self, embedding: np.ndarray) -> list[Group]:
        """Groups with an edit, nearest centroid first (Euclidean, as k-means assigns)."""
        usable = [g for g in self.groups if g.edit]
        return sorted(usable, key=lambda g: float(np.linalg.norm(np.asarray(g.centroid) - embedding)))

    def nearest(self, embedding: np.ndarray) -> Group | None:
        ranked = self.ranked(embedding)
        return ranked[0] if ranked else self.global_group

    def largest(self) -> Group | None:
        usable = [g for g in self.groups if g.edit]
        return max(usable, key=lambda g: len(g.members)) if usable else self.global_group

    def load_edit(self, group: Group) -> UserEdit:
        if group.edit is None:
            raise FitError(f"group {group.id} has no edit: {group.error}")
        if group.id not in self._edits:
            self._edits[group.id] = UserEdit.load(self.root / group.edit)
        return self._edits[group.id]

    def save(self) -> None:
        data = {
            "format": GROUPS_FORMAT,
            "groups": [asdict(g) for g in self.groups],
            "global": asdict(self.global_group) if self.global_group else None,
            "k_scores": {str(k): v for k, v in self.k_scores.items()},
            **self.info,
        }
        atomic_write_text(self.root / "groups.json", json.dumps(data, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, root: str | Path) -> GroupModel:
        path = Path(root) / "groups.json"
        if not path.is_file():
            raise FileNotFoundError(f"no groups.json in {root}; fit groups with `chameleon fit-groups`")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != GROUPS_FORMAT:
            raise ValueError(f"{path} is not a Chameleon group file ({data.get('format')!r})")
        info = {k: v for k, v in data.items() if k not in ("format", "groups", "global", "k_scores")}
        glob = Group(**data["global"]) if data.get("global") else None
        return cls(
            Path(root),
            [Group(**g) for g in data["groups"]],
            glob,
            {int(k): v for k, v in data.get("k_scores", {}).items()},
            info,
        )


@dataclass
class MemberData:
    """What grouping needs per user: profile embedding, pairs (with insights), and the history items
    not used for pairs (for the calibration of α, as :func:`~chameleon_llm.fit.fit_user` does)."""

    embedding: np.ndarray
    pairs: list[Pair]
    insights: Insights
    heldout: list[HistoryItem] = field(default_factory=list)


def prepare_members(
    lm: LoadedModel,
    histories: Mapping[str, Sequence[HistoryItem]],
    config: FitConfig,
    *,
    options: GroupOptions,
    store: Path | None = None,
    cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, MemberData], dict[str, str]]:
    """Embeddings and pairs per user (pairs from ``store/pairs`` or the core cache, else generated)."""
    embedder = get_embedder(options.embedder)
    members: dict[str, MemberData] = {}
    errors: dict[str, str] = {}
    for user, items in histories.items():
        try:
            emb = profile_embedding(embedder, items, options.max_items)
            own = config.for_history(len(items))  # the selection the user's own fit makes
            path = _pair_cache_path(lm, items, own, store) if store is not None else None
            if path is None or not path.is_file():
                path = _pair_cache_path(lm, items, own, cache_dir()) if cache else None
            pairs, insights, selected = build_pairs(lm, items, own, embedder, {}, cache=path)
            heldout = [it for i, it in enumerate(items) if i not in set(selected)]
            members[user] = MemberData(emb, pairs, insights, heldout)
        except Exception as exc:  # one user's failure must not stop grouping
            errors[user] = f"{type(exc).__name__}: {exc}"
            log.warning("grouping: user %s skipped: %s", user, errors[user])
        if progress:
            progress(1)
    return members, errors


def _group_insights(datas: Sequence[MemberData]) -> Insights:
    quotes = " | ".join(d.insights.personal[:160] for d in datas[:3])
    return Insights(
        personal=f"A group of {len(datas)} users. {quotes}",
        neutral=datas[0].insights.neutral,
        personal_checked=all(d.insights.personal_checked for d in datas),
    )


def _fit_group(
    lm: LoadedModel,
    config: FitConfig,
    root: Path,
    group: Group,
    datas: Sequence[MemberData],
    options: GroupOptions,
) -> None:
    pooled = pool_pairs([d.pairs for d in datas], options.max_pairs, options.seed)
    group.n_pairs = len(pooled)
    try:
        edit, dirs = edit_from_pairs(
            lm,
            pooled,
            config,
            _group_insights(datas),
            {},
            extra_stats={"group": group.id, "n_members": len(group.members)},
        )
    except FitError as exc:
        group.error = f"FitError: {exc}"
        log.warning("group %s has no edit: %s", group.id, exc)
        return
    if config.edit.calibrate:  # α (and β) by held-out log-likelihood, on the members' unused items
        heldout = pool_items([d.heldout for d in datas], config.edit.calibration_items)
        edit = calibrate_edit(lm, edit, heldout, [], config, {}, None, dirs)
    group.edit = f"edits/{group.id}.safetensors"
    group.edit_id = edit.id
    edit.save(root / group.edit)


def fit_group_model(
    lm: LoadedModel,
    members: Mapping[str, MemberData],
    config: FitConfig,
    out: str | Path,
    *,
    options: GroupOptions,
    extra_info: Mapping[str, Any] | None = None,
) -> GroupModel:
    """Cluster ``members`` and fit one edit per group (and the global edit); write the folder.

    ``extra_info`` (e.g. ``history_framing``, ``task``) is recorded in ``groups.json``.
    """
    root = Path(out)
    users = list(members)
    if not users:
        raise FitError("no user could be prepared for grouping (see the warnings)")
    x = np.stack([members[u].embedding for u in users])
    labels, centroids, scores = cluster(x, options)
    groups: list[Group] = []
    for gi in range(len(centroids)):
        names = [u for u, lab in zip(users, labels.tolist(), strict=True) if lab == gi]
        if names:
            groups.append(Group(f"g{gi}", names, [round(float(v), 6) for v in centroids[gi]]))
    for g in groups:
        _fit_group(lm, config, root, g, [members[u] for u in g.members], options)
    glob = None
    if options.global_edit:
        glob = Group(GLOBAL, users, [round(float(v), 6) for v in x.mean(0)])
        _fit_group(lm, config, root, glob, [members[u] for u in users], options)
    info = {
        "options": asdict(options),
        "config": config.model_dump(mode="json"),
        "model": dict(lm.identity),
        "k": len(groups),
        **dict(extra_info or {}),
    }
    model = GroupModel(root, groups, glob, scores, info)
    model.save()
    return model


@dataclass
class GroupSet:
    """The all-users model plus per-fold held-out models (``model_for`` picks the right one)."""

    root: Path
    all: GroupModel
    folds: list[GroupModel] = field(default_factory=list)
    fold_of: dict[str, int] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def model_for(self, user: str) -> tuple[GroupModel, bool]:
        """The model to use for ``user`` as a new user, and whether the user is held out of it."""
        if user in self.fold_of:
            return self.folds[self.fold_of[user]], True
        return self.all, user not in self.all.members

    @property
    def embedder(self) -> str:
        return str(self.all.info.get("options", {}).get("embedder", DEFAULT_EMBEDDER))

    @property
    def max_items(self) -> int:
        return int(self.all.info.get("options", {}).get("max_items", 64))

    @property
    def framing(self) -> str | None:
        """How the LaMP profiles were framed (``"task"`` | ``"raw"``); ``None``: history files, or a
        set fitted before the framing was recorded."""
        value = self.info.get("history_framing", self.all.info.get("history_framing"))
        return str(value) if value is not None else None

    def save(self) -> None:
        data = {
            "format": GROUPSET_FORMAT,
            "folds": len(self.folds),
            "fold_of": self.fold_of,
            "rule": self.rule,
            **self.info,
        }
        atomic_write_text(self.root / "groupset.json", json.dumps(data, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, root: str | Path) -> GroupSet:
        base = Path(root)
        path = base / "groupset.json"
        if not path.is_file():
            if (base / "groups.json").is_file():  # a bare GroupModel folder
                return cls(base, GroupModel.load(base))
            raise FileNotFoundError(f"no groupset.json in {base}; fit groups with `chameleon fit-groups`")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != GROUPSET_FORMAT:
            raise ValueError(f"{path} is not a Chameleon group set ({data.get('format')!r})")
        folds = [GroupModel.load(base / f"fold-{i}") for i in range(int(data["folds"]))]
        info = {k: v for k, v in data.items() if k not in ("format", "folds", "fold_of", "rule")}
        return cls(
            base,
            GroupModel.load(base / "all"),
            folds,
            dict(data["fold_of"]),
            dict(data.get("rule", {})),
            info,
        )


def fit_group_set(
    lm: LoadedModel,
    histories: Mapping[str, Sequence[HistoryItem]],
    config: FitConfig,
    out: str | Path,
    *,
    options: GroupOptions | None = None,
    folds: int = 0,
    rule: Mapping[str, Any] | None = None,
    store: Path | None = None,
    cache: bool = True,
    progress: Callable[[int], None] | None = None,
    framing: str | None = None,
    task: str | None = None,
) -> GroupSet:
    """Prepare every user once, then fit ``all/`` and, for ``folds >= 2``, ``fold-<i>/`` held-out models.

    Users go to folds round-robin in their given order (user ``j`` → fold ``j % folds``).
    ``framing`` and ``task`` describe how ``histories`` were built (``UserSet.framing``/``.task`` of
    :func:`~chameleon_llm.scale.fit_many.users_from_lamp`; ``None`` for history files); both are
    recorded, and the harness methods check the framing against the histories they are given.
    """
    opts = options or GroupOptions()
    if folds == 1 or folds < 0:
        raise ValueError("folds must be 0 (no held-out models) or >= 2")
    root = Path(out)
    members, errors = prepare_members(
        lm, histories, config, options=opts, store=store, cache=cache, progress=progress
    )
    described = {"history_framing": framing, "task": task}
    all_model = fit_group_model(lm, members, config, root / "all", options=opts, extra_info=described)
    fold_of = {u: j % folds for j, u in enumerate(members)} if folds else {}
    fold_models = []
    for i in range(folds):
        kept = {u: d for u, d in members.items() if fold_of[u] != i}
        fold_models.append(
            fit_group_model(lm, kept, config, root / f"fold-{i}", options=opts, extra_info=described)
        )
    info = {**described, "errors": errors, "users": list(histories)}
    gs = GroupSet(root, all_model, fold_models, fold_of, dict(rule or {}), info)
    gs.save()
    return gs
