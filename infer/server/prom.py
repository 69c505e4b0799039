"""Prometheus metrics of the server (text format at GET /metrics), one registry per server.

    infer_requests_total{finish_reason}           finished requests (stop, length, abort, error; sample 0's)
    infer_prompt_tokens_total                      prompt tokens of finished requests
    infer_generation_tokens_total                  tokens generated (all samples)
    infer_time_to_first_token_seconds              histogram: arrival -> first token
    infer_inter_token_latency_seconds              histogram: gaps between a request's token steps
    infer_e2e_request_latency_seconds              histogram: arrival -> last token
    infer_requests_running / _waiting              gauges (sequences)
    infer_kv_pages_in_use / infer_kv_pages_total   gauges
    infer_prefix_cache_hit_rate                    gauge: prompt tokens served by the cache / looked up
    infer_preemptions_total                        counter
    infer_spec_proposed_tokens_total               speculative decoding: tokens proposed / accepted, verify runs
    infer_spec_accepted_tokens_total / infer_spec_verify_runs_total / infer_spec_emitted_tokens_total
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SPEC_COUNTERS = {"spec_proposed_tokens": "Tokens proposed for verification (speculative decoding)",
                 "spec_accepted_tokens": "Proposed tokens the target accepted",
                 "spec_verify_runs": "Verify runs (a sequence's proposals checked in one step)",
                 "spec_emitted_tokens": "Tokens emitted by verify runs (accepted + one each)"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("infer_requests", "Finished requests by finish reason", ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("infer_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("infer_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram("infer_time_to_first_token_seconds", "Arrival to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.itl = Histogram("infer_inter_token_latency_seconds", "Gap between a request's token steps",
                             registry=r, buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("infer_e2e_request_latency_seconds", "Arrival to last token", registry=r,
                             buckets=LATENCY_BUCKETS)
        self.running = Gauge("infer_requests_running", "Sequences running", registry=r)
        self.waiting = Gauge("infer_requests_waiting", "Sequences waiting", registry=r)
        self.pages_in_use = Gauge("infer_kv_pages_in_use", "KV pages owned by sequences", registry=r)
        self.pages_total = Gauge("infer_kv_pages_total", "KV pages in the pool", registry=r)
        self.prefix_hit_rate = Gauge("infer_prefix_cache_hit_rate", "Prompt tokens served by the prefix cache",
                                     registry=r)
        self.preemptions = Counter("infer_preemptions", "Sequences preempted (recomputed later)", registry=r)
        self._preempted_seen = 0
        self.spec = {name: Counter(f"infer_{name}", help_, registry=r) for name, help_ in SPEC_COUNTERS.items()}
        self._spec_seen = dict.fromkeys(SPEC_COUNTERS, 0)

    def on_step(self, engine, updates) -> None:
        """Engine thread, after every step: finished requests into the histograms, engine gauges."""
        for u in updates:
            if u.finished and u.output is None and u.finish_reason == "abort" and u.index == 0:
                self.requests.labels(finish_reason="abort").inc()
            if u.output is None:
                continue
            m = u.output.metrics
            self.requests.labels(finish_reason=u.output.finish_reason or "unknown").inc()  # sample 0's reason
            self.prompt_tokens.inc(m.num_prompt_tokens)
            if m.ttft_s is not None:
                self.ttft.observe(m.ttft_s)
            for gap in m.itl_s:
                self.itl.observe(gap)
            if m.e2e_s is not None:
                self.e2e.observe(m.e2e_s)
        self.generation_tokens.inc(sum(len(u.new_token_ids) for u in updates))
        self.refresh(engine)

    def refresh(self, engine) -> None:
        s = engine.stats()
        self.running.set(s["running"])
        self.waiting.set(s["waiting"])
        self.pages_in_use.set(s["pages_in_use"])
        self.pages_total.set(s["num_pages"])
        self.prefix_hit_rate.set(s["prefix_hit_rate"])
        if s["preemptions"] > self._preempted_seen:
            self.preemptions.inc(s["preemptions"] - self._preempted_seen)
            self._preempted_seen = s["preemptions"]
        for name, counter in self.spec.items():  # absent without speculation: the counters stay at 0
            if s.get(name, 0) > self._spec_seen[name]:
                counter.inc(s[name] - self._spec_seen[name])
                self._spec_seen[name] = s[name]

    def failed(self) -> None:
        """A request that ended with an engine error."""
        self.requests.labels(finish_reason="error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
