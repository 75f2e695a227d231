"""Prometheus metrics (one registry per app, so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "chameleon_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "chameleon_request_latency_seconds",
            "HTTP request latency (streams: to the end)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.completions = Counter(
            "chameleon_completions",
            "Chat completions by the edit that served them",
            ["edit_source"],
            registry=r,
        )
        self.batch_size = Histogram(
            "chameleon_batch_size", "Rows per generation batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_personalized = Histogram(
            "chameleon_batch_personalized_rows",
            "Rows with an edit per batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "chameleon_batch_seconds", "Wall time per generation batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("chameleon_queue_depth", "Requests waiting for a batch", registry=r)
        self.prompt_tokens = Counter("chameleon_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("chameleon_generated_tokens", "Tokens generated", registry=r)
        self.fits = Counter("chameleon_fits", "Finished fit jobs by status", ["status"], registry=r)
        self.fit_seconds = Histogram(
            "chameleon_fit_seconds", "Fit job wall time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.jobs_running = Gauge("chameleon_jobs_running", "Fit jobs running now", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
