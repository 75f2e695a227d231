"""The HTTP API: OpenAI chat completions with per-user edits, user history/edit management, jobs."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..history import HistoryError, parse_history
from ..models import render_messages
from .auth import Principal, check_user_id
from .engine import Row
from .errors import ApiError, error_response
from .jobs import FitFunction
from .metrics import Metrics
from .middleware import BodyLimit, RequestMetrics
from .schemas import ChatCompletionRequest, HistoryAppend, chunk_body, completion_body, usage
from .service import ModelFactory, Resolved, Services, build_services
from .settings import ServeSettings
from .store import job_view

log = logging.getLogger(__name__)


class _Holder:
    services: Services | None = None

    def get(self) -> Services:
        if self.services is None:
            raise ApiError(503, "the server is starting", code="not_ready")
        return self.services


def create_app(
    settings: ServeSettings,
    *,
    model_factory: ModelFactory | None = None,
    fit_function: FitFunction | None = None,
) -> FastAPI:
    """The ASGI app; the model loads and the store opens in its lifespan (before it accepts requests)."""
    holder = _Holder()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(
            build_services, settings, metrics=metrics, model_factory=model_factory, fit_function=fit_function
        )
        await services.batcher.start()
        services.runner.start(resume_interrupted=settings.resume_interrupted_jobs)
        holder.services = services
        log.info(
            "serving %s on %s:%d (store %s, auth %s)",
            services.lm.name,
            settings.host,
            settings.port,
            settings.store,
            "on" if services.keys.enabled else "off",
        )
        try:
            yield
        finally:
            holder.services = None
            await services.batcher.stop()
            services.runner.stop()
            services.store.close()

    app = FastAPI(title="Chameleon", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return error_response(
            400, f"{param or 'body'}: {first.get('msg')}", code="invalid_request", param=param
        )

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal server error", code="internal_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        )

    async def services() -> Services:  # async: no thread-pool hop per request
        return holder.get()

    async def principal(request: Request, svc: Services = Depends(services)) -> Principal:
        return svc.keys.authenticate(request.headers.get("authorization"))

    @app.get("/healthz")
    def healthz(svc: Services = Depends(services)) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": svc.lm.name,
            "queue": svc.batcher.depth(),
            "jobs_running": svc.store.count_jobs("running"),
            "jobs_queued": svc.store.count_jobs("queued"),
            "uptime_s": round(time.time() - svc.started_at, 1),
        }

    @app.get("/metrics")
    def prometheus(svc: Services = Depends(services)) -> Response:
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models(svc: Services = Depends(services), who: Principal = Depends(principal)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": svc.lm.name,
                    "object": "model",
                    "created": int(svc.started_at),
                    "owned_by": "chameleon",
                }
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(
        body: ChatCompletionRequest, svc: Services = Depends(services), who: Principal = Depends(principal)
    ) -> JSONResponse | StreamingResponse:
        user = check_user_id(body.user) if body.user else None
        who.require("chat", user)
        row, resolved = _prepare(svc, body, user)
        ext = resolved.extension(user)
        headers = {"x-chameleon-edit-source": resolved.source, "x-chameleon-edit-id": resolved.edit_id or ""}
        svc.metrics.completions.labels(resolved.source).inc()
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), svc.lm.name
        ticket = svc.batcher.submit(row, stream=body.stream)
        if not body.stream:
            await ticket.result()
            return JSONResponse(
                completion_body(
                    cid=cid,
                    created=created,
                    model=model,
                    text=row.text,
                    finish_reason=row.finish_reason or "stop",
                    prompt_tokens=len(row.prompt_ids),
                    completion_tokens=len(row.tokens),
                    extension=ext,
                ),
                headers=headers,
            )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            try:
                yield _sse(
                    chunk_body(
                        cid=cid,
                        created=created,
                        model=model,
                        delta={"role": "assistant", "content": ""},
                        finish_reason=None,
                        extension=ext,
                    )
                )
                async for piece in ticket.stream():
                    yield _sse(
                        chunk_body(
                            cid=cid,
                            created=created,
                            model=model,
                            delta={"content": piece},
                            finish_reason=None,
                        )
                    )
                yield _sse(
                    chunk_body(
                        cid=cid,
                        created=created,
                        model=model,
                        delta={},
                        finish_reason=row.finish_reason or "stop",
                    )
                )
                if include_usage:
                    yield _sse(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage(len(row.prompt_ids), len(row.tokens)),
                        }
                    )
            except Exception as exc:
                log.error("stream %s failed: %s", cid, type(exc).__name__)
                yield _sse(ApiError(500, "generation failed", code="generation_failed").body())
            finally:
                row.cancelled = True  # a disconnected client frees its row at the next step
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.post("/v1/users/{user_id}/history", status_code=202)
    def append_history(
        user_id: str,
        body: HistoryAppend,
        svc: Services = Depends(services),
        who: Principal = Depends(principal),
    ) -> dict[str, Any]:
        check_user_id(user_id, param="user_id")
        who.require("write", user_id)
        s = svc.settings
        records = body.records()
        if not records:
            raise ApiError(400, "no history items given", code="invalid_history", param="items")
        if len(records) > s.max_history_items_per_request:
            raise ApiError(
                400,
                f"{len(records)} items in one request; the limit is {s.max_history_items_per_request}",
                code="too_many_items",
                param="items",
            )
        for i, rec in enumerate(records):
            for key in ("input", "output"):
                value = rec.get(key) if isinstance(rec, dict) else None
                if isinstance(value, str) and len(value) > s.max_item_chars:
                    raise ApiError(
                        400,
                        f"items[{i}].{key} has {len(value)} characters; the limit is {s.max_item_chars}",
                        code="item_too_long",
                        param=f"items[{i}].{key}",
                    )
        try:
            items = parse_history(records, source="items", max_chars=s.max_item_chars)
        except HistoryError as exc:
            raise ApiError(400, str(exc), code="invalid_history", param="items") from None
        will_fit = svc.store.history_size(user_id) + len(items) >= s.min_history_to_fit
        if will_fit and not svc.store.can_queue_fit(user_id, max_pending=s.max_pending_jobs):
            raise ApiError(
                429,
                f"{s.max_pending_jobs} fits are already queued or running; retry later",
                code="too_many_jobs",
            )
        try:
            size = svc.store.append_history(user_id, items, max_total=s.max_history_items_per_user)
        except ValueError as exc:
            raise ApiError(400, str(exc), code="history_limit_exceeded", param="items") from None
        if svc.log_content:
            log.debug("user %s history += %s", user_id, json.dumps([it.to_dict() for it in items]))
        log.info("user %s: %d history item(s) added (now %d)", user_id, len(items), size)
        job, note = None, None
        if size >= s.min_history_to_fit:
            try:
                job = svc.runner.request_fit(user_id)
            except OverflowError as exc:
                note = f"history saved but no fit was queued: {exc}; POST /v1/users/{user_id}/fit later"
        else:
            note = f"fits start once the user has {s.min_history_to_fit} history items"
        return {
            "object": "chameleon.history_append",
            "user": user_id,
            "added": len(items),
            "history_size": size,
            "job": job_view(job) if job else None,
            "note": note,
        }

    @app.post("/v1/users/{user_id}/fit", status_code=202)
    def refit(
        user_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        check_user_id(user_id, param="user_id")
        who.require("write", user_id)
        size = svc.store.history_size(user_id)
        if size == 0:
            raise ApiError(404, f"user {user_id!r} has no history", code="user_not_found")
        if size < svc.settings.min_history_to_fit:
            raise ApiError(
                400,
                f"user {user_id!r} has {size} history item(s); fits need {svc.settings.min_history_to_fit}",
                code="not_enough_history",
            )
        try:
            job = svc.runner.request_fit(user_id)
        except OverflowError as exc:
            raise ApiError(429, str(exc), code="too_many_jobs") from None
        return job_view(job)

    @app.get("/v1/users/{user_id}")
    def get_user(
        user_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        check_user_id(user_id, param="user_id")
        who.require("read", user_id)
        return _user_view(svc, user_id)

    @app.get("/v1/users/{user_id}/history")
    def get_history(
        user_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
        svc: Services = Depends(services),
        who: Principal = Depends(principal),
    ) -> dict[str, Any]:
        check_user_id(user_id, param="user_id")
        who.require("read", user_id)
        size = svc.store.history_size(user_id)
        if size == 0:
            raise ApiError(404, f"user {user_id!r} has no history", code="user_not_found")
        items = svc.store.history(user_id, offset=offset, limit=limit)
        return {
            "object": "list",
            "user": user_id,
            "total": size,
            "offset": offset,
            "data": [it.to_dict() for it in items],
        }

    @app.delete("/v1/users/{user_id}")
    def delete_user(
        user_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        check_user_id(user_id, param="user_id")
        who.require("delete", user_id)
        record = svc.store.user(user_id)
        if record is None:
            raise ApiError(404, f"user {user_id!r} not found", code="user_not_found")
        svc.store.delete_user(user_id)
        svc.runner.forget(user_id)
        svc.resolver.forget(record.edit.edit_id if record.edit else None)
        log.info("user %s deleted", user_id)
        return {"object": "chameleon.user.deleted", "id": user_id, "deleted": True}

    @app.get("/v1/jobs/{job_id}")
    def get_job(
        job_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        job = svc.store.job(job_id)
        if job is None or not who.covers(job.user_id):  # do not reveal other users' job ids
            raise ApiError(404, f"job {job_id!r} not found", code="job_not_found")
        who.require("read", job.user_id)
        return job_view(job)

    return app


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _prepare(svc: Services, body: ChatCompletionRequest, user: str | None) -> tuple[Row, Resolved]:
    """Validate a chat request against the limits and build its batch row."""
    s = svc.settings
    body.check_supported()
    if len(body.messages) > s.max_messages:
        raise ApiError(
            400,
            f"{len(body.messages)} messages; the limit is {s.max_messages}",
            code="too_many_messages",
            param="messages",
        )
    max_tokens = body.max_completion_tokens or body.max_tokens or s.default_max_tokens
    if max_tokens > s.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens}; the limit is {s.max_tokens_limit}",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
        for i, m in enumerate(body.messages)
    ]
    prompt = render_messages(svc.request_lm, messages)
    ids = svc.encode(prompt)
    if len(ids) > s.max_prompt_tokens:
        raise ApiError(
            400,
            f"the messages are {len(ids)} tokens; the limit is {s.max_prompt_tokens}",
            code="context_length_exceeded",
            param="messages",
        )
    resolved = svc.resolver.resolve(user)
    if svc.log_content:
        log.debug("chat user=%s source=%s prompt=%r", user, resolved.source, prompt)
    row = Row(
        prompt_ids=ids,
        edit=resolved.edit,
        max_tokens=max_tokens,
        temperature=body.temperature if body.temperature is not None else 0.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=body.seed,
        stop=body.stops(),
        min_tokens=min(body.min_tokens, max_tokens),
    )
    return row, resolved


def _user_view(svc: Services, user_id: str) -> dict[str, Any]:
    record = svc.store.user(user_id)
    if record is None:
        raise ApiError(404, f"user {user_id!r} not found", code="user_not_found")
    job = record.last_job
    pending = job is not None and job.status in ("queued", "running")
    edit = record.edit
    serving = svc.resolver.resolve(user_id)
    if edit is None:
        status = (
            "fitting" if pending else ("failed" if job is not None and job.status != "succeeded" else "none")
        )
        edit_view: dict[str, Any] = {"status": status}
    else:
        stale = record.history_size > edit.history_size
        status = "refitting" if pending else ("stale" if stale else "ready")
        if serving.source != "user" and not pending:
            status = "unusable"  # e.g. fitted on another model or an older edit format: POST .../fit
        edit_view = {
            "status": status,
            "id": edit.edit_id,
            "insights": edit.insights,
            "history_size": edit.history_size,
            "stale": stale,
            "job_id": edit.job_id,
            "created_at": int(edit.created_at),
        }
    return {
        "id": record.id,
        "object": "chameleon.user",
        "created_at": int(record.created_at),
        "updated_at": int(record.updated_at),
        "history_size": record.history_size,
        "edit": edit_view,
        "group": record.group_id,
        "serving": {"edit_source": serving.source, "edit_id": serving.edit_id, "note": serving.note},
        "last_job": job_view(job) if job else None,
    }


def run_server(settings: ServeSettings) -> None:
    """Start the server and block until it is stopped (Ctrl-C / SIGTERM)."""
    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("chameleon_llm").setLevel(settings.log_level.upper())
    check_exposure(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


def check_exposure(settings: ServeSettings) -> None:
    """Refuse to serve a non-loopback address without API keys unless explicitly allowed."""
    if not settings.all_keys() and not settings.is_loopback() and not settings.allow_unauthenticated:
        raise SystemExit(
            f"refusing to serve {settings.host} without API keys: configure api_keys or keys_file, "
            "or set allow_unauthenticated=true"
        )
    if not settings.all_keys():
        log.warning("no API keys configured: every caller may read and change every user")
