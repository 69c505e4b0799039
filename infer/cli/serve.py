"""`python -m infer serve --model smollm2-135m-instruct`: the OpenAI-compatible HTTP server.

Endpoints: /v1/models, /v1/completions, /v1/chat/completions (streaming with `"stream": true`),
/health, /metrics (Prometheus). Ctrl-C shuts down gracefully: requests in flight finish (up to
--graceful-timeout seconds), then the rest are aborted. With --api-key (or INFER_API_KEY set) every
route but /health (and /metrics, unless --metrics-need-key) needs `Authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import os

from infer.config.dtypes import DTYPES, KV_CACHE_DTYPES
from infer.server.limits import API_KEY_ENV, ServerLimits


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", default="smollm2-135m-instruct",
                   help="model name, .gguf file or checkpoint dir (default: smollm2-135m-instruct)")
    p.add_argument("--served-model-name", default=None, help="the name clients send as `model`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--weight-format", default=None,
                   help="store the projections quantized: native (a GGUF file's own Q8_0/Q4_0/Q4_1), int8, "
                        "int4-g32, int4-g64, int4-g128 (round to nearest after loading)")
    p.add_argument("--kv-cache-dtype", default=None, choices=KV_CACHE_DTYPES,
                   help="KV page pool dtype (default: the model's dtype; int8 adds a scale per token and head)")
    p.add_argument("--num-pages", type=int, default=None, help="KV pages in the pool (default: max-num-seqs "
                                                               "sequences of up to 1024 tokens)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=2048, help="longest prompt + completion, in tokens")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel devices per replica (default 1)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel replicas, each with its own page pool")
    p.add_argument("--speculative", default=None, choices=("ngram",),
                   help="speculative decoding in the engine: ngram = prompt lookup (proposals copied from the context)")
    p.add_argument("--num-speculative-tokens", type=int, default=None,
                   help="proposals per verify run (default 4)")
    p.add_argument("--no-warmup", action="store_true", help="skip compiling every step shape at start")
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--log-level", default="info")
    d = ServerLimits()
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer <key>` (default: ${API_KEY_ENV} "
                                                   f"if set, else no key)")
    p.add_argument("--metrics-need-key", action="store_true", help="/metrics behind the API key too")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger request bodies get 413")
    p.add_argument("--max-prompts-per-request", type=int, default=d.max_prompts_per_request)
    p.add_argument("--max-waiting-seqs", type=int, default=d.max_waiting_sequences,
                   help="sequences accepted beyond --max-num-seqs; past it requests get 429 with Retry-After")
    p.add_argument("--timeout-keep-alive", type=float, default=d.timeout_keep_alive_s,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--timeout-headers", type=float, default=d.timeout_headers_s,
                   help="seconds a connection has to send a whole request head")
    p.add_argument("--max-requests-per-connection", type=int, default=d.max_requests_per_connection)
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="connections open at once; one more is answered 503 and closed")


def serve_limits(args) -> ServerLimits:
    """The ServerLimits the flags name (the API key from --api-key, else the environment)."""
    return ServerLimits(max_body_bytes=args.max_body_bytes, max_prompts_per_request=args.max_prompts_per_request,
                        max_waiting_sequences=args.max_waiting_seqs,
                        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                        metrics_need_key=args.metrics_need_key, timeout_keep_alive_s=args.timeout_keep_alive,
                        timeout_headers_s=args.timeout_headers,
                        max_requests_per_connection=args.max_requests_per_connection,
                        max_connections=args.max_connections)


def cmd_serve(args) -> int:
    import logging
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s", force=True)
    from infer.parallel.tensor_parallel import make_mesh
    from infer.server.serve import build_server, run_until_signal
    server, _ = build_server(args.model, host=args.host, port=args.port, dtype=args.dtype,
                             weight_format=args.weight_format, kv_cache_dtype=args.kv_cache_dtype,
                             served_model_name=args.served_model_name, warmup=not args.no_warmup,
                             log_level=args.log_level, graceful_timeout_s=args.graceful_timeout,
                             limits=serve_limits(args),
                             num_pages=args.num_pages, page_size=args.page_size, max_num_seqs=args.max_num_seqs,
                             max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                             enable_prefix_caching=not args.no_prefix_caching, mesh=make_mesh(args.tp, args.dp),
                             speculative=args.speculative, num_speculative_tokens=args.num_speculative_tokens)
    run_until_signal(server)
    return 0
