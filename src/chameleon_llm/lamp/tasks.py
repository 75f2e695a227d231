"""LaMP task specifications: labels, metrics, prompts, query extraction and answer parsing.

Task names are canonical ``LaMP_1`` … ``LaMP_7``; LaMP-2 exists in two versions, ``LaMP_2N`` (the
retired news categorization of the first release) and ``LaMP_2M`` (the current movie tagging).
Official files call both ``"LaMP_2"``: :func:`resolve_task` tells them apart from the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

TaskKind = Literal["classification", "rating", "generation"]

CLASSIFICATION_METRICS = ("accuracy", "f1")
RATING_METRICS = ("MAE", "RMSE")
GENERATION_METRICS = ("rouge-1", "rouge-L")

# Label lists exactly as in the official evaluator (LaMP-Benchmark/LaMP, eval/evaluation.py).
LAMP1_LABELS = ("[1]", "[2]")
# News categories: eval/evaluation.py at commit 021b860 (before LaMP-2 became movie tagging).
LAMP2_NEWS_LABELS = (
    "food & drink",
    "sports",
    "education",
    "parents",
    "religion",
    "travel",
    "business",
    "crime",
    "science & technology",
    "culture & arts",
    "entertainment",
    "politics",
    "women",
    "style & beauty",
    "healthy living",
)
# The order the official LaMP-2 news inputs list the categories in.
LAMP2_NEWS_PROMPT_ORDER = (
    "women",
    "religion",
    "politics",
    "style & beauty",
    "entertainment",
    "culture & arts",
    "sports",
    "science & technology",
    "travel",
    "business",
    "crime",
    "education",
    "healthy living",
    "parents",
    "food & drink",
)
# Movie tags: eval/evaluation.py at HEAD (commit 3fe9efb onwards).
LAMP2_MOVIE_LABELS = (
    "sci-fi",
    "based on a book",
    "comedy",
    "action",
    "twist ending",
    "dystopia",
    "dark comedy",
    "classic",
    "psychology",
    "fantasy",
    "romance",
    "thought-provoking",
    "social commentary",
    "violence",
    "true story",
)
LAMP3_LABELS = ("1", "2", "3", "4", "5")

#: History input used for LaMP-7 profile items (tweets have no input side).
LAMP7_HISTORY_INPUT = ""


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific the loaders, metrics and harness need."""

    name: str
    official_name: str
    title: str
    kind: TaskKind
    metrics: tuple[str, ...]
    labels: tuple[str, ...]
    prompt_labels: tuple[str, ...]
    template: str
    marker: str
    history_input: str | None
    history_output: str

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def required_profile_fields(self) -> tuple[str, ...]:
        """Profile-item fields :func:`profile_to_history` reads."""
        fields = (self.history_input, self.history_output)
        return tuple(f for f in fields if f is not None)

    def with_labels(self, labels: Iterable[str]) -> TaskSpec:
        """Copy with a replaced label list (e.g. from a ``labels.json``), also used in the prompt."""
        if not self.is_classification:
            raise ValueError(f"{self.name} is a {self.kind} task: it has no label list to replace")
        new = tuple(str(x) for x in labels)
        if not new or len(set(new)) != len(new):
            raise ValueError(f"label list for {self.name} must be non-empty and without duplicates: {new!r}")
        return replace(self, labels=new, prompt_labels=new)


_LAMP1_TEMPLATE = (
    'For an author who has written the paper with the title "{title}", which reference is related? '
    'Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"'
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "LaMP_1",
            "LaMP_1",
            "Personalized Citation Identification",
            "classification",
            CLASSIFICATION_METRICS,
            LAMP1_LABELS,
            LAMP1_LABELS,
            _LAMP1_TEMPLATE,
            "",
            "abstract",
            "title",
        ),
        TaskSpec(
            "LaMP_2N",
            "LaMP_2",
            "Personalized News Categorization",
            "classification",
            CLASSIFICATION_METRICS,
            LAMP2_NEWS_LABELS,
            LAMP2_NEWS_PROMPT_ORDER,
            "Which category does this article relate to among the following categories? Just answer with "
            "the category name without further explanation. categories: [{labels}] article: {text}",
            "article:",
            "text",
            "category",
        ),
        TaskSpec(
            "LaMP_2M",
            "LaMP_2",
            "Personalized Movie Tagging",
            "classification",
            CLASSIFICATION_METRICS,
            LAMP2_MOVIE_LABELS,
            LAMP2_MOVIE_LABELS,
            "Which tag does this movie relate to among the following tags? Just answer with the tag name "
            "without further explanation. tags: [{labels}] description: {text}",
            "description:",
            "description",
            "tag",
        ),
        TaskSpec(
            "LaMP_3",
            "LaMP_3",
            "Personalized Product Rating",
            "rating",
            RATING_METRICS,
            LAMP3_LABELS,
            LAMP3_LABELS,
            "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, "
            "or 5 without further explanation. review: {text}",
            "review:",
            "text",
            "score",
        ),
        TaskSpec(
            "LaMP_4",
            "LaMP_4",
            "Personalized News Headline Generation",
            "generation",
            GENERATION_METRICS,
            (),
            (),
            "Generate a headline for the following article: {text}",
            "article:",
            "text",
            "title",
        ),
        TaskSpec(
            "LaMP_5",
            "LaMP_5",
            "Personalized Scholarly Title Generation",
            "generation",
            GENERATION_METRICS,
            (),
            (),
            "Generate a title for the following abstract of a paper: {text}",
            "paper:",
            "abstract",
            "title",
        ),
        TaskSpec(
            "LaMP_6",
            "LaMP_6",
            "Personalized Email Subject Generation",
            "generation",
            GENERATION_METRICS,
            (),
            (),
            "Generate a subject for the following email: {text}",
            ":",
            "text",
            "title",
        ),
        TaskSpec(
            "LaMP_7",
            "LaMP_7",
            "Personalized Tweet Paraphrasing",
            "generation",
            GENERATION_METRICS,
            (),
            (),
            "Paraphrase the following tweet without any explanation before or after it: {text}",
            ":",
            None,
            "text",
        ),
    )
}

_ALIASES: dict[str, str] = {
    "lamp_2n": "LaMP_2N",
    "lamp_2news": "LaMP_2N",
    "lamp_2_news": "LaMP_2N",
    "lamp_2_old": "LaMP_2N",
    "lamp_2m": "LaMP_2M",
    "lamp_2movie": "LaMP_2M",
    "lamp_2movies": "LaMP_2M",
    "lamp_2_movie": "LaMP_2M",
    "lamp_2_movies": "LaMP_2M",
    "lamp_2_new": "LaMP_2M",
}
for _n in (1, 3, 4, 5, 6, 7):
    _ALIASES[f"lamp_{_n}"] = f"LaMP_{_n}"


def _normalize_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = re.sub(r"^lamp_?(\d)", r"lamp_\1", key)
    return key


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Return the :class:`TaskSpec` for a name such as ``"LaMP_4"``, ``"LaMP-4"`` or ``"lamp2n"``.

    The bare ``"LaMP_2"`` is ambiguous (news or movies): use :func:`resolve_task` with the data.
    """
    if isinstance(task, TaskSpec):
        return task
    key = _normalize_name(task)
    if key == "lamp_2":
        raise ValueError(
            "task 'LaMP_2' is ambiguous: use 'LaMP_2N' (news categorization, the retired version) or "
            "'LaMP_2M' (movie tagging, the current version), or let the loader infer it from the data"
        )
    if key not in _ALIASES:
        known = ", ".join(TASKS)
        raise ValueError(f"unknown LaMP task {task!r}; known tasks: {known}")
    return TASKS[_ALIASES[key]]


def resolve_task(
    task: str | TaskSpec,
    *,
    golds: Iterable[str] | None = None,
    queries: Iterable[Mapping[str, Any]] | None = None,
) -> TaskSpec:
    """Like :func:`get_task`, but decide an ambiguous ``"LaMP_2"`` from the queries or gold labels."""
    if isinstance(task, TaskSpec) or _normalize_name(task) != "lamp_2":
        return get_task(task)
    variant = _lamp2_from_queries(queries) if queries is not None else None
    if variant is None and golds is not None:
        variant = _lamp2_from_golds(golds)
    if variant is None:
        return get_task(task)  # raises the "ambiguous" error
    return TASKS[variant]


def _lamp2_from_queries(queries: Iterable[Mapping[str, Any]]) -> str | None:
    for query in queries:
        text = str(query.get("input", ""))
        if text.startswith("Which category does this article"):
            return "LaMP_2N"
        if text.startswith("Which tag does this movie"):
            return "LaMP_2M"
        for item in query.get("profile") or ():
            if isinstance(item, Mapping) and "category" in item:
                return "LaMP_2N"
            if isinstance(item, Mapping) and "tag" in item:
                return "LaMP_2M"
    return None


def _lamp2_from_golds(golds: Iterable[str]) -> str | None:
    values = {str(g).strip() for g in golds}
    if values and values <= set(LAMP2_NEWS_LABELS):
        return "LaMP_2N"
    if values and values <= set(LAMP2_MOVIE_LABELS):
        return "LaMP_2M"
    return None


def infer_task_from_input(text: str) -> TaskSpec | None:
    """Guess the task from a query input's instruction (``None`` when no template matches)."""
    for spec in TASKS.values():
        prefix = spec.template.split("{", 1)[0]
        if prefix and text.startswith(prefix):
            return spec
    return None


# --------------------------------------------------------------------------- prompts


def build_prompt(task: str | TaskSpec, text: str, references: Sequence[str] | None = None) -> str:
    """The LaMP paper's non-personalized prompt for ``text``.

    For LaMP-1, ``text`` is the title of the user's paper and ``references`` the two candidates.
    """
    spec = get_task(task)
    if spec.name == "LaMP_1":
        if references is None or len(references) != 2:
            raise ValueError("LaMP_1 prompts need references=(reference_1, reference_2)")
        return spec.template.format(title=text, ref1=references[0], ref2=references[1])
    return spec.template.format(text=text, labels=", ".join(spec.prompt_labels))


_LAMP1_RE = re.compile(
    r'^For an author who has written the paper with the title "(?P<title>.*)", which reference is related\? '
    r'Just answer with \[1\] or \[2\] without explanation\. \[1\]: "(?P<ref1>.*)" \[2\]: "(?P<ref2>.*)"$',
    re.DOTALL,
)


def parse_citation_input(text: str) -> tuple[str, str, str] | None:
    """Split a LaMP-1 input into ``(paper_title, reference_1, reference_2)``; ``None`` if it does not fit."""
    match = _LAMP1_RE.match(text.strip())
    if match is None:
        return None
    return match["title"], match["ref1"], match["ref2"]


def _template_regex(spec: TaskSpec) -> re.Pattern[str]:
    prefix = spec.template.split("{text}", 1)[0]
    parts = [re.escape(p) for p in prefix.split("{labels}")]
    return re.compile("^" + r"[^\]]*".join(parts) + r"(?P<text>.*)$", re.DOTALL)


def extract_query_text(task: str | TaskSpec, text: str) -> str:
    """Pull the article/review/abstract/tweet out of a LaMP input (which carries its instruction).

    The known template prefix is removed when it matches; otherwise the official marker rule
    (text after the first ``article:``/``review:``/… as in LaMP's ``prompts/utils.py``) is used;
    otherwise the whole input is returned. For LaMP-1 the result is the two candidate reference
    titles joined by a space, the query the official retrieval code builds.
    """
    spec = get_task(task)
    if spec.name == "LaMP_1":
        parsed = parse_citation_input(text)
        if parsed is not None:
            return f"{parsed[1]} {parsed[2]}"
        quoted = re.findall(r'"([^"]*)"', text)
        return f"{quoted[1]} {quoted[2]}" if len(quoted) >= 3 else text.strip()
    match = _template_regex(spec).match(text)
    if match is not None:
        return match["text"].strip()
    index = text.find(spec.marker)
    if index != -1:
        return text[index + len(spec.marker) :].strip()
    return text.strip()


# --------------------------------------------------------------------------- answers

_ANSWER_PREFIX = re.compile(
    r"^(?:answer|output|category|tag|label|reference|score|rating|title|headline|subject|"
    r"paraphrase|paraphrased tweet|tweet)\s*[:\-]\s*",
    re.IGNORECASE,
)
_STRIP_CHARS = " \t\r\n\"'`*.“”‘’"


def _first_line(text: str) -> str:
    cleaned = re.sub(r"^```\w*\s*|\s*```$", "", text.strip())
    for line in cleaned.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _parse_citation(text: str) -> str | None:
    match = re.search(r"\[\s*([12])\s*\]", text) or re.search(r"(?<![\d.])([12])(?![\d.])", text)
    return f"[{match.group(1)}]" if match else None


def _parse_label(labels: Sequence[str], text: str) -> str | None:
    candidate = _ANSWER_PREFIX.sub("", _first_line(text)).strip(_STRIP_CHARS).lower()
    by_lower = {label.lower(): label for label in labels}
    if candidate in by_lower:
        return by_lower[candidate]
    haystack = text.lower()
    best: tuple[int, int, str] | None = None
    for label in labels:
        match = re.search(r"(?<![\w-])" + re.escape(label.lower()) + r"(?![\w-])", haystack)
        if match and (best is None or (match.start(), -len(label)) < best[:2]):
            best = (match.start(), -len(label), label)
    return best[2] if best else None


def _parse_rating(text: str) -> str | None:
    for match in re.finditer(r"(?<![\d.])\d+(?:\.\d+)?", text):
        value = float(match.group(0))
        if 1.0 <= value <= 5.0:
            return str(int(value)) if value.is_integer() else str(value)
    return None


def _parse_generation(text: str) -> str | None:
    line = _ANSWER_PREFIX.sub("", _first_line(text)).strip(" \t*\"'`“”")
    return line or None


def parse_answer(task: str | TaskSpec, text: str) -> str | None:
    """Normalize a model completion to a label, a rating or a title; ``None`` when unparsable."""
    spec = get_task(task)
    if spec.name == "LaMP_1":
        return _parse_citation(text)
    if spec.kind == "classification":
        return _parse_label(spec.labels, text)
    if spec.kind == "rating":
        return _parse_rating(text)
    return _parse_generation(text)


def is_valid(spec_kind: str, parsed: str | None) -> bool:
    """Whether a parsed answer counts as valid (non-empty) for the valid-answer rate."""
    return parsed is not None and bool(parsed.strip())


def scored_prediction(spec: TaskSpec, raw: str) -> str:
    """What the official metric scores: the parsed answer, or ``""`` when it does not parse.

    ``""`` is LaMP's unparsable prediction: a wrong label, the farther of 1 and 5 for a rating (not an
    unbounded error from a stray number such as a year), an empty title.
    """
    parsed = parse_answer(spec, raw)
    return parsed if parsed is not None and is_valid(spec.kind, parsed) else ""
