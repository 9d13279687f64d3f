"""Prometheus metrics for GET /metrics: requests, tokens, latencies, queue, KV usage, prefix-cache hits,
and with speculative decoding on, draft tokens proposed and accepted.

Counters and histograms are fed by the routes (Metrics.record_* calls); gauges read the engine's
scheduler and block manager at scrape time. One registry per app, so tests can run several apps.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class _PrefixCache:
    """Reads the block manager's prefix-cache counters when scraped."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        st = self.engine.blocks.stats
        yield CounterMetricFamily("zen_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                  value=st.query_tokens)
        yield CounterMetricFamily("zen_prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                  value=st.hit_tokens)
        yield CounterMetricFamily("zen_num_preemptions", "Sequences preempted for lack of KV blocks",
                                  value=self.engine.scheduler.num_preemptions)
        spec = self.engine.speculator
        if spec is not None:
            st = spec.stats
            yield CounterMetricFamily("zen_spec_decode_num_draft_tokens", "Speculative draft tokens verified",
                                      value=st.proposed)
            yield CounterMetricFamily("zen_spec_decode_num_accepted_tokens", "Speculative draft tokens accepted",
                                      value=st.accepted)
            yield CounterMetricFamily("zen_spec_decode_num_verify_steps", "Speculative row-steps (each adds one "
                                      "token of the target's own)", value=st.rows)


class Metrics:
    def __init__(self, engine, model_name: str):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("zen_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("zen_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("zen_generation_tokens", "Tokens generated", registry=r)
        self.finished = Counter("zen_request_success", "Finished sequences by finish reason", ["finish_reason"],
                                registry=r)
        self.ttft = Histogram("zen_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("zen_inter_token_latency_seconds", "Time between tokens of one sequence",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("zen_e2e_request_latency_seconds", "Request latency, submit to last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        sched = engine.scheduler
        Gauge("zen_num_requests_running", "Sequences holding KV blocks", registry=r).set_function(
            lambda: len(sched.running))
        Gauge("zen_num_requests_waiting", "Sequences queued for KV blocks", registry=r).set_function(
            lambda: len(sched.waiting))
        Gauge("zen_kv_cache_usage_ratio", "Fraction of KV blocks held by live sequences", registry=r).set_function(
            lambda: engine.blocks.usage)
        info = Gauge("zen_model_info", "The served model", ["model"], registry=r)
        info.labels(model=model_name).set(1)
        r.register(_PrefixCache(engine))

    def record_sequence(self, prompt_tokens: int, output_tokens: int, finish_reason: str, e2e: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.finished.labels(finish_reason=finish_reason).inc()
        self.e2e.observe(e2e)

    def render(self) -> bytes:
        return generate_latest(self.registry)
