"""Server lifecycle on a tiny random model (token-id prompts): a failing step fails only the requests in it,
shutdown lets in-flight streams finish, nothing hangs."""
import json
import threading

import httpx
import pytest

from conftest import wait_until
from infer.server.serve import build_app


def start(tiny, **kw):
    import uvicorn
    cfg, params = tiny
    app, engine = build_app(params, cfg, None, "tiny", num_pages=64, page_size=8, max_num_seqs=4,
                            max_num_batched_tokens=16, max_model_len=256)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **kw))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    assert wait_until(lambda: srv.started or not th.is_alive()) and srv.started, "the server did not start"
    return srv, th, engine, f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"


def stop(srv, th, engine):
    srv.should_exit = True
    th.join(30)
    assert not th.is_alive() and not engine._thread.is_alive(), "shutdown hung"


def test_a_failing_step_errors_its_requests_and_the_server_keeps_serving(tiny):
    srv, th, engine, url = start(tiny)
    try:
        real_step, calls = engine.engine.step, []

        def flaky():
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected device failure")
            return real_step()
        engine.engine.step = flaky
        body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 20, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 500 and "injected device failure" in r.json()["error"]["message"]
        engine.engine.step = real_step
        ok = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 20
        # the engine thread finishes its bookkeeping after the response is sent: poll (with a deadline)
        assert wait_until(lambda: engine.num_active == 0 and not engine.engine.requests
                          and engine.engine.stats()["pages_in_use"] == 0, timeout=30)
        m = httpx.get(url + "/metrics").text
        assert 'infer_requests_total{finish_reason="error"} 1.0' in m
    finally:
        stop(srv, th, engine)


def test_shutdown_lets_an_in_flight_stream_finish(tiny):
    srv, th, engine, url = start(tiny, timeout_graceful_shutdown=20)
    body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 200, "temperature": 0, "stream": True,
            "logprobs": 1}
    lines = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        it = r.iter_lines()
        lines.append(next(it))
        srv.should_exit = True  # shut down while the stream is open
        lines += list(it)
    lines = [x for x in lines if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks if c["choices"]) == 200
    assert chunks[-1]["usage"]["completion_tokens"] == 200
    stop(srv, th, engine)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
