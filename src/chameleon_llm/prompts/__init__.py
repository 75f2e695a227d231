"""Versioned prompt templates, stored as text files beside this module.

A template file holds a first part (the system or user message) and, after a ``---assistant---`` or
``---user---`` marker line, the second part: an assistant prefix or the user turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

_MARKERS = ("---assistant---", "---user---")


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    head: str
    marker: str
    tail: str

    def render(self, **values: str) -> tuple[str, str]:
        """(first part, second part) with ``{placeholders}`` filled."""
        try:
            return self.head.format(**values).strip(), self.tail.format(**values).strip()
        except KeyError as exc:
            raise ValueError(f"template {self.name}_{self.version} needs the value {exc}") from exc


def load_template(name: str, version: str = "v1") -> Template:
    """Read ``{name}_{version}.txt`` from the package."""
    fname = f"{name}_{version}.txt"
    try:
        text = resources.files(__package__).joinpath(fname).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ValueError(f"no prompt template {fname!r} in chameleon_llm/prompts") from exc
    for marker in _MARKERS:
        if marker in text:
            head, tail = text.split(marker, 1)
            return Template(name, version, head, marker, tail)
    return Template(name, version, text, "", "")
