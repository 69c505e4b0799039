"""Load test of the OpenAI-compatible server, beside the same workload through the Python Engine.

For each request rate, one workload (infer/bench/workload.py: Poisson arrivals, token-id prompts,
greedy, no stop ids, so every request produces exactly its max_tokens) is served twice in this
process, on the same model and the same engine settings:

- http: a server on a loopback port (FastAPI on uvicorn, its engine on its own thread); an asyncio
  client (httpx) sends each request as a streamed /v1/completions call at its arrival time, at most
  `max_inflight` open at once; times are taken on the client, from the SSE chunks;
- engine: the Python Engine driven in-process (infer.bench.serving_bench.run_engine).

The difference is the HTTP layer's cost: JSON, SSE framing, the event loop, the hand-off between
the handler and the engine thread.

Spec fields (configs/experiments/http_bench.yaml)::

    model: small               # as serving_bench: a configs/models name (random weights) or a model dir/name
    rates: [4.0, 16.0, 64.0]
    workload: {...}            # infer.bench.workload.WorkloadSpec
    num_pages: 256
    page_size: 16
    max_num_seqs: 16
    max_num_batched_tokens: 64
    max_model_len: null
    max_inflight: 64           # client-side bound on open requests
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import time
from typing import List, Optional, Tuple

import jax
import numpy as np

from infer.bench import report
from infer.bench.experiment import parse_spec, require
from infer.bench.serving_bench import ServingBenchSpec, load_model, run_engine
from infer.bench.workload import WorkloadRequest, generate_workload, parse_workload
from infer.engine.metrics import percentiles

COLUMNS = ("rate", "system", "requests", "out_tokens", "duration_s", "tok_s", "vs_engine", "ttft_p50_ms",
           "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "e2e_p99_s", "same_tokens")

DEFINITIONS = """\
Definitions (wall-clock seconds, time.perf_counter; a request's arrival is its scheduled Poisson time):
- http: a streamed /v1/completions call per request over loopback (logprobs=1, so each token is a chunk
  even when it decodes to no text); TTFT = arrival to the first chunk carrying a token, ITL = the gaps
  between a request's consecutive token chunks, e2e = arrival to `[DONE]`.
  Output tokens are the final chunk's usage.completion_tokens.
- engine: the same requests through the Python Engine in-process; TTFT = arrival to the step that sampled
  the first token returning, ITL = gaps between a request's token steps, e2e = arrival to its last token.
- tok_s: output tokens / (first arrival to last finish); vs_engine: tok_s / the engine's tok_s at that rate.
- same_tokens: the HTTP run produced as many output tokens per request as the engine run (greedy, no stops).
"""


@dataclasses.dataclass(frozen=True)
class HttpBenchSpec:
    model: str
    workload: dict
    rates: Tuple[float, ...] = (4.0, 16.0, 64.0)
    dtype: Optional[str] = None
    num_pages: int = 256
    page_size: int = 16
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 64
    max_model_len: Optional[int] = None
    max_inflight: int = 64
    seed: int = 0
    name: str = "http_bench"

    def __post_init__(self):
        object.__setattr__(self, "workload", parse_workload(self.workload, f"{self.name}.workload"))
        require(len(self.rates) > 0 and all(r > 0 for r in self.rates), f"{self.name}.rates",
                f"must be a non-empty list of rates > 0, got {self.rates}")
        require(self.max_inflight >= 1, f"{self.name}.max_inflight", f"must be >= 1, got {self.max_inflight}")

    def serving_spec(self) -> ServingBenchSpec:
        return ServingBenchSpec(model=self.model, workload=dataclasses.asdict(self.workload), dtype=self.dtype,
                                num_pages=self.num_pages, page_size=self.page_size, max_num_seqs=self.max_num_seqs,
                                max_num_batched_tokens=self.max_num_batched_tokens, max_model_len=self.max_model_len,
                                seed=self.seed, systems=("engine",), plot=False, name=self.name)


def start_server(params, cfg, s: HttpBenchSpec, max_model_len: int):
    """(uvicorn.Server, its thread, base URL) of a warmed-up server on a free loopback port."""
    import uvicorn

    from infer.server.serve import build_app
    app, _ = build_app(params, cfg, None, "bench", warmup=True, num_pages=s.num_pages, page_size=s.page_size,
                       max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens,
                       max_model_len=max_model_len)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 120
    while not server.started:
        if time.time() > deadline or not th.is_alive():
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, th, f"http://127.0.0.1:{port}"


async def _drive(url: str, requests: List[WorkloadRequest], max_inflight: int):
    """Streamed completions at their arrival times; per request (arrival, text chunk times, done time, tokens)."""
    import httpx
    sem = asyncio.Semaphore(max_inflight)
    t0 = time.perf_counter()

    async def one(client, r: WorkloadRequest):
        await asyncio.sleep(max(0.0, t0 + r.arrival_s - time.perf_counter()))
        async with sem:
            body = {"model": "bench", "prompt": r.prompt_ids, "max_tokens": r.max_new_tokens, "temperature": 0,
                    "stream": True, "logprobs": 1}  # every token comes as a chunk (the model has no text)
            times, tokens = [], 0
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if any(c.get("text") or (c.get("logprobs") or {}).get("tokens") for c in chunk.get("choices", [])):
                        times.append(time.perf_counter())
            return t0 + r.arrival_s, times, time.perf_counter(), tokens

    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return await asyncio.gather(*[one(client, r) for r in requests])


def _row(rate, system, arrivals, firsts, ends, itls, tokens):
    dur = max(ends) - min(arrivals)
    ms = lambda d, k: 1e3 * d[k]
    ttft, itl = percentiles(f - a for f, a in zip(firsts, arrivals)), percentiles(itls)
    return {"rate": rate, "system": system, "requests": len(arrivals), "out_tokens": int(sum(tokens)),
            "duration_s": dur, "tok_s": sum(tokens) / dur, "ttft_p50_ms": ms(ttft, "p50"),
            "ttft_p99_ms": ms(ttft, "p99"), "itl_p50_ms": ms(itl, "p50"), "itl_p99_ms": ms(itl, "p99"),
            "e2e_p99_s": percentiles(e - a for e, a in zip(ends, arrivals))["p99"]}


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(HttpBenchSpec, spec)
    ss = s.serving_spec()
    cfg, params, label = load_model(ss)
    max_len = s.max_model_len or min(cfg.max_seq_len, s.workload.max_total_len)
    server, th, url = start_server(params, cfg, s, max_len)
    rows = []
    try:
        for rate in s.rates:
            requests = generate_workload(dataclasses.replace(s.workload, rate=float(rate)), cfg.vocab_size)
            asyncio.run(_drive(url, requests[:2], s.max_inflight))  # warm the HTTP path (connections, handlers)
            got = asyncio.run(_drive(url, requests, s.max_inflight))
            arr = [g[0] for g in got]
            http = _row(float(rate), "http", arr, [g[1][0] if g[1] else g[2] for g in got], [g[2] for g in got],
                        [b - a for g in got for a, b in zip(g[1], g[1][1:])], [g[3] for g in got])
            metrics, tokens, _ = run_engine(params, cfg, ss, requests)
            eng = _row(float(rate), "engine", [m.arrival for m in metrics], [m.first_token for m in metrics],
                       [m.finished for m in metrics], [x for m in metrics for x in m.itl_s],
                       [len(t) for t in tokens])
            same = float(np.mean([g[3] == len(t) for g, t in zip(got, tokens)]))
            for row in (http, eng):
                row.update(model=label, backend=jax.default_backend(), vs_engine=row["tok_s"] / eng["tok_s"],
                           same_tokens=same)
            rows += [http, eng]
            print(f"  rate {rate:g}/s: http {http['tok_s']:.0f} tok/s, engine {eng['tok_s']:.0f} tok/s; "
                  f"TTFT p50 {http['ttft_p50_ms']:.1f} vs {eng['ttft_p50_ms']:.1f} ms", flush=True)
    finally:
        server.should_exit = True
        th.join(60)
    os.makedirs(out_dir, exist_ok=True)
    table = report.markdown_table(rows, COLUMNS)
    report.write_json({"spec": dataclasses.asdict(s), "model": label, "definitions": DEFINITIONS, "rows": rows},
                      os.path.join(out_dir, "http.json"))
    with open(os.path.join(out_dir, "http.md"), "w") as f:
        f.write(f"# {s.name}: the HTTP API vs the Python Engine, same workload\n\nModel: {label}; backend: "
                f"{jax.default_backend()}.\n\n{table}\n{DEFINITIONS}")
    return rows
