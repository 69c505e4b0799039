"""Build and run the server: a model, an Engine on its thread, the FastAPI app on uvicorn.

    python -m infer serve --model smollm2-135m-instruct --port 8000
    server, handle = build_server("smollm2-135m-instruct", port=0)   # tests: port 0 = any free port
    build_server(..., limits=ServerLimits(api_key="sk-...", max_body_bytes=1 << 20))   # infer/server/limits.py
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Optional

from infer.engine.data_parallel import make_engine
from infer.server.app import create_app
from infer.server.async_engine import AsyncEngine
from infer.server.limits import ServerLimits
from infer.server.prom import ServerMetrics

log = logging.getLogger("infer.server")


def served_name(model: str) -> str:
    """The name clients send as `model`: a model name as given, a path's last component."""
    return os.path.basename(os.path.normpath(model)) if os.path.sep in model or os.path.exists(model) else model


def build_app(params, cfg, tokenizer, model_name: str, warmup: bool = False, limits: Optional[ServerLimits] = None,
              **engine_options):
    """(FastAPI app, AsyncEngine) over a fresh Engine (warmup: every step shape compiled first); its thread runs."""
    metrics = ServerMetrics()
    engine = AsyncEngine(make_engine(params, cfg, tokenizer=tokenizer, **engine_options), on_step=metrics.on_step)
    if warmup:
        n, t = len(engine.engine.all_step_shapes()), time.perf_counter()
        log.info("compiling %d step shapes before serving (--no-warmup skips this)", n)
        engine.engine.warmup()
        log.info("compiled %d step shapes in %.1f s", n, time.perf_counter() - t)
    metrics.refresh(engine.engine)
    engine.start()
    return create_app(engine, tokenizer, model_name, metrics, limits=limits), engine


def uvicorn_config(app, limits: Optional[ServerLimits] = None, **kw):
    """uvicorn.Config with the connection bounds of `limits`: idle keep-alive and request-head timeouts, requests
    per connection, connections at once (past it a JSON 503; infer/server/connections.py)."""
    import uvicorn

    from infer.server.connections import guarded_h11
    limits = limits if limits is not None else ServerLimits()
    return uvicorn.Config(app, http=guarded_h11(limits), timeout_keep_alive=limits.timeout_keep_alive_s, **kw)


def build_server(model: str, host: str = "127.0.0.1", port: int = 8000, dtype=None,
                 weight_format: Optional[str] = None, kv_cache_dtype: Optional[str] = None,
                 served_model_name: Optional[str] = None, warmup: bool = True, log_level: str = "info",
                 graceful_timeout_s: float = 30.0, limits: Optional[ServerLimits] = None, **engine_options):
    """(uvicorn.Server, AsyncEngine) for a checkpoint (ours, Hugging Face, GGUF or a model name)."""
    import uvicorn

    from infer.io.checkpoint import load_model_dir
    from infer.io.tokenizer import load_tokenizer
    cfg, params = load_model_dir(model, dtype=dtype, weight_format=weight_format)
    if kv_cache_dtype is not None:
        cfg = cfg.replace(kv_cache_dtype=kv_cache_dtype)
    tok = load_tokenizer(model, vocab_size=cfg.vocab_size)
    app, engine = build_app(params, cfg, tok, served_model_name or served_name(model), warmup=warmup,
                            limits=limits, **engine_options)
    config = uvicorn_config(app, limits, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s)
    return uvicorn.Server(config), engine


def run_until_signal(server) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (a second signal forces it).

    uvicorn's own handlers re-raise the signal inside the event loop after it stops serving, which
    cancels the application's shutdown (the engine thread would not be stopped); these only flag it."""
    import asyncio
    import signal

    def on_signal(*_):
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.capture_signals = contextlib.nullcontext  # keep ours
    try:
        asyncio.run(server.serve())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
