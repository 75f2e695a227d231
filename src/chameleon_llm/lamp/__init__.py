"""LaMP benchmark: data loading in the official format, task specs, official metrics, downloads."""

from chameleon_llm.lamp.data import (
    LampDataset,
    LampFormatError,
    LampQuery,
    load_labels,
    load_lamp_files,
    load_outputs,
    load_questions,
    load_task_dir,
    profile_to_history,
)
from chameleon_llm.lamp.deepen import deepen, deepen_task_dir
from chameleon_llm.lamp.download import BASE_URL, DownloadError, download_file, download_task, task_urls
from chameleon_llm.lamp.metrics import (
    aggregate,
    per_query_scores,
    per_user_scores,
    score,
    write_predictions,
)
from chameleon_llm.lamp.tasks import (
    TASKS,
    TaskSpec,
    build_prompt,
    extract_query_text,
    get_task,
    parse_answer,
    parse_citation_input,
    resolve_task,
)

__all__ = [
    "BASE_URL",
    "TASKS",
    "DownloadError",
    "LampDataset",
    "LampFormatError",
    "LampQuery",
    "TaskSpec",
    "aggregate",
    "build_prompt",
    "deepen",
    "deepen_task_dir",
    "download_file",
    "download_task",
    "extract_query_text",
    "get_task",
    "load_labels",
    "load_lamp_files",
    "load_outputs",
    "load_questions",
    "load_task_dir",
    "parse_answer",
    "parse_citation_input",
    "per_query_scores",
    "per_user_scores",
    "profile_to_history",
    "resolve_task",
    "score",
    "task_urls",
    "write_predictions",
]
