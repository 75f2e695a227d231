"""Request bodies (OpenAI chat-completions subset, history appends) and response builders."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ApiError


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" for p in self.content):
            raise ApiError(
                400,
                "only text content parts are supported",
                code="unsupported_content",
                param=f"messages[{index}].content",
            )
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this server honours; other OpenAI fields are accepted and ignored unless listed below."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0, description="vLLM extension: no end-of-sequence before this many tokens")

    UNSUPPORTED: ClassVar[tuple[str, ...]] = (
        "tools",
        "functions",
        "logprobs",
        "top_logprobs",
        "audio",
        "prediction",
    )

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", code="unsupported_parameter", param="n")
        extra = self.model_extra or {}
        for name in self.UNSUPPORTED:
            if extra.get(name) not in (None, False, []):
                raise ApiError(
                    400, f"{name!r} is not supported by this server", code="unsupported_parameter", param=name
                )
        fmt = extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            raise ApiError(
                400,
                "only response_format type 'text' is supported",
                code="unsupported_parameter",
                param="response_format",
            )

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", code="invalid_stop", param="stop")
        return tuple(stops)


class HistoryAppend(BaseModel):
    """``{"items": [{"input": ..., "output": ...}, ...]}`` (the key ``history`` is accepted too)."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any] | None = None
    history: list[Any] | None = None

    def records(self) -> list[Any]:
        if (self.items is None) == (self.history is None):
            raise ApiError(
                400,
                'give the new history items as {"items": [{"input": ..., "output": ...}]}',
                code="invalid_history",
                param="items",
            )
        return list(self.items if self.items is not None else self.history or [])


def completion_body(
    *,
    cid: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    extension: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": extension.get("edit_id"),
        "chameleon": extension,
    }


def chunk_body(
    *,
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None,
    extension: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if extension is not None:
        body["system_fingerprint"] = extension.get("edit_id")
        body["chameleon"] = extension
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
