"""The server against hostile clients (issue 31): one server on the 5M `models/target` model (a real tokenizer, a test
chat template), behind an API key, with small limits. Clients are httpx, raw sockets and the `openai` client; the
engine is paused (its step made a no-op) where a test needs requests to stay in flight.
"""
import asyncio
import json
import os
import socket
import threading
import time

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import infer
from conftest import hypothesis_examples, serving, wait_until
from infer.config.paths import REPO_ROOT
from infer.io.chat_template import ChatTemplate
from infer.server.limits import ServerLimits
from infer.server.serve import build_app, uvicorn_config

NAME = "target"
KEY = "sk-test-31"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_SEQS, WAITING = 8, 4
LIMITS = ServerLimits(max_body_bytes=1 << 20, max_prompts_per_request=8, max_waiting_sequences=WAITING,
                      api_key=KEY, timeout_headers_s=1.5, max_requests_per_connection=3)
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def server():
    import uvicorn
    path = os.path.join(REPO_ROOT, "models", "target")
    cfg, params = infer.load_model_dir(path, dtype="float32")
    tok = infer.load_tokenizer(path, vocab_size=cfg.vocab_size)
    tok.chat_template = ChatTemplate(template=TEMPLATE, special_tokens={}, source="test")
    app, engine = build_app(params, cfg, tok, NAME, limits=LIMITS, num_pages=64, page_size=32,
                            max_num_seqs=MAX_SEQS, max_num_batched_tokens=32, max_model_len=128)
    with serving(uvicorn_config(app, LIMITS, host="127.0.0.1", port=0, log_level="warning", lifespan="on"),
                 engine) as port:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "app": app, "engine": engine, "tok": tok}


class Paused:
    """The engine thread keeps taking requests and aborts, but its steps do nothing until the block ends."""

    def __init__(self, server):
        self.eng = server["engine"].engine
        self.go = threading.Event()

    def __enter__(self):
        real = self.real = self.eng.step

        def gated():
            if self.go.wait(0.002):
                return real()
            return []
        self.eng.step = gated
        return self

    def __exit__(self, *exc):
        self.go.set()
        self.eng.step = self.real


def idle(server):
    eng = server["engine"].engine
    return wait_until(lambda: server["engine"].num_active == 0 and server["app"].state.admission.in_flight == 0
                      and eng.stats()["pages_in_use"] == 0, 60)


def is_openai_error(r: httpx.Response) -> bool:
    err = r.json().get("error")
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"} and isinstance(
        err["message"], str)


def stream_lines(url, body, out, i):
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as r:
        out[i] = (r.status_code, [line for line in r.iter_lines() if line])


def stream_text(lines):
    return "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[:-1]
                   if x.startswith("data: {") and json.loads(x[6:])["choices"])


EDGES = [("top_k", 2 ** 31), ("top_k", 2 ** 63), ("top_k", -2), ("top_p", 0), ("top_p", 1.0000001),
         ("top_p", 1e308), ("temperature", 1e39), ("temperature", -1e-300), ("seed", 2 ** 32), ("seed", 2 ** 64),
         ("seed", -1), ("max_tokens", 2 ** 31), ("max_tokens", 2 ** 63), ("max_tokens", 0), ("n", 2 ** 31),
         ("n", MAX_SEQS + 1), ("n", 0), ("min_p", 1.5), ("logprobs", 2 ** 63), ("stop_token_ids", None)]


def test_a_bad_value_at_the_edge_of_a_device_array_gets_400_and_8_streams_in_flight_finish(server):
    url = server["url"]
    body = {"model": NAME, "max_tokens": 24, "temperature": 0}
    prompts = [f"def f{i}(x):" for i in range(8)]
    control = [None] * 8  # the same 8 requests at once with no bad request beside them

    def one(i):
        control[i] = httpx.post(url + "/v1/completions", json={**body, "prompt": prompts[i]}, headers=AUTH,
                                timeout=60).json()["choices"][0]["text"]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out = [None] * 8
    with Paused(server):
        threads = [threading.Thread(target=stream_lines, args=(url, {**body, "prompt": p}, out, i))
                   for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(server["engine"].engine.requests) == 8, 60), "the 8 streams never queued"
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as h:
            for field, value in EDGES:
                if value is None:
                    continue
                r = h.post("/v1/completions", json={**body, "prompt": "hi", field: value})
                assert r.status_code == 400 and is_openai_error(r), (field, value, r.text)
                assert r.json()["error"]["param"] == field, (field, value, r.text)
        assert len(server["engine"].engine.requests) == 8  # none of the streams was touched
    for t in threads:
        t.join(60)
    for i, (status, lines) in enumerate(out):
        assert status == 200 and lines[-1] == "data: [DONE]" and stream_text(lines) == control[i]
        assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 24
    assert idle(server)


MALFORMED = [
    ("/v1/completions", b"[" * 3000),
    ("/v1/completions", b'{"a":' * 3000),
    ("/v1/chat/completions", b"[" * 100_000),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "\ud800x"}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": ["ok", "\udfffx"]}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": "\ud800"}]}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "stop": ["\ud800"]}).encode()),
    ("/v1/completions", json.dumps({"model": "\ud800", "prompt": "hi"}).encode()),
    ("/v1/completions", b'{"model": "target", "prompt": "hi"\x00}'),
    ("/v1/completions", b'\x00\x00\x00'),
    ("/v1/completions", b'\xff\xfe{"model": 1}'),
    ("/v1/completions", b'{"model": "target", "prompt": "hi", "temperature": NaN}'),
    ("/v1/completions", b'{"model": "target", "prompt": "hi", "top_p": Infinity}'),
    ("/v1/completions", b'{"model": "target", "prompt": "hi", "max_tokens": -Infinity}'),
    ("/v1/completions", b'{"model": "target", "prompt": "hi", "seed": 1e400}'),
    ("/v1/completions", b''),
    ("/v1/completions", b'null'),
    ("/v1/completions", b'"a string"'),
    ("/v1/completions", b'[{"model": "target"}]'),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": {}}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": [[]]}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": [1.5]}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": [2 ** 70]}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": ["a"] * 9}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "n": "2"}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "max_tokens": 1.5}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "stop": {}}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "stream_options": []}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "stream_options": {"include_usage": 1}}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "logit_bias": {"x": 5}}).encode()),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "hi", "logit_bias": []}).encode()),
    ("/v1/completions", json.dumps({"model": [NAME], "prompt": "hi"}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [1]}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": ["user"], "content": "x"}]}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": None}]}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": [{"type": "image"}]}]}
                                        ).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                                         "best_of": 3}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                                         "echo": True}).encode()),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                                         "logit_bias": {"-5": -100}}).encode()),
]


def test_malformed_bodies_get_a_json_error_in_the_openai_shape_never_a_500(server):
    with httpx.Client(base_url=server["url"], headers={**AUTH, "content-type": "application/json"}, timeout=30) as h:
        for path, raw in MALFORMED:
            r = h.post(path, content=raw)
            assert r.status_code == 400 and is_openai_error(r), (raw[:80], r.status_code, r.text[:300])
        # text with a null byte is text: it is served
        r = h.post("/v1/completions", json={"model": NAME, "prompt": "a\x00b", "max_tokens": 1})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
        # neutral values of the fields with limits are accepted
        r = h.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 1, "logit_bias": {}, "echo": False, "best_of": 1})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert idle(server)


def test_an_unexpected_error_is_a_500_in_the_openai_shape_with_a_request_id_in_the_log(server, caplog):
    def broken(*a, **k):
        raise RuntimeError("an unexpected bug")
    real, server["engine"].add = server["engine"].add, broken
    try:
        with caplog.at_level("ERROR", logger="infer.server"):
            r = httpx.post(server["url"] + "/v1/completions", json={"model": NAME, "prompt": "hi"}, headers=AUTH)
    finally:
        server["engine"].add = real
    assert r.status_code == 500 and is_openai_error(r) and r.json()["error"]["code"] == "internal_error"
    rid = r.json()["error"]["message"].rsplit(" ", 1)[-1].rstrip(")")
    assert any(rid in rec.getMessage() and rec.exc_info for rec in caplog.records), "the request id is not logged"
    assert server["app"].state.admission.in_flight == 0


def rss():
    return psutil.Process().memory_info().rss


def send_huge(port, chunked: bool, result: dict):
    """POST 50 MB (Content-Length, or chunked with no length) while reading the answer on the same socket."""
    total, chunk = 50 << 20, b"x" * (64 << 10)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + KEY.encode() + (b"\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else
                              b"\r\nContent-Length: %d\r\n\r\n" % total))
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    t0 = time.perf_counter()

    def writer():
        try:
            s.sendall(head)
            for _ in range(total // len(chunk)):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        except OSError:  # the server answered and closed: expected
            pass
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    got, length = b"", None
    while length is None or len(got.split(b"\r\n\r\n", 1)[1]) < length:  # the head, then Content-Length bytes
        data = s.recv(65536)
        if not data:
            break
        got += data
        if length is None and b"\r\n\r\n" in got:
            result["seconds"] = time.perf_counter() - t0
            head = got.split(b"\r\n\r\n", 1)[0].lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    result["status"] = got.split(b" ", 2)[1] if got else b""
    result["body"] = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b""
    s.close()
    w.join(30)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50MB_body_gets_413_at_once_while_health_answers_and_memory_stays(server, chunked):
    before, result = rss(), {}
    t = threading.Thread(target=send_huge, args=(server["port"], chunked, result))
    t.start()
    slowest = 0.0
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        while True:  # at least once, then for as long as the body is being sent
            t0 = time.perf_counter()
            assert h.get("/health").status_code == 200
            slowest = max(slowest, time.perf_counter() - t0)
            if not t.is_alive():
                break
    t.join()
    assert result["status"] == b"413", result
    err = json.loads(result["body"])["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    # deadlines that only catch the old behaviour (the body read whole on the event loop: 54 s, /health frozen)
    assert result["seconds"] < 5 and slowest < 1.0, (result["seconds"], slowest)
    assert rss() - before < 100 << 20
    print(f"413 after {result['seconds'] * 1e3:.0f} ms; slowest /health {slowest * 1e3:.0f} ms; "
          f"RSS {(rss() - before) / 2 ** 20:+.1f} MB")


def test_a_long_prompt_is_tokenized_off_the_event_loop(server):
    """A body just under the limit, one long prompt: /health answers while it is tokenized, then its 400."""
    done, out = threading.Event(), {}

    def big():
        out["r"] = httpx.post(server["url"] + "/v1/completions", headers=AUTH, timeout=60,
                              json={"model": NAME, "prompt": "word " * 200_000})
        done.set()
    threading.Thread(target=big).start()
    slowest, pings = 0.0, 0
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        while not done.is_set():
            t0 = time.perf_counter()
            assert h.get("/health").status_code == 200
            slowest, pings = max(slowest, time.perf_counter() - t0), pings + 1
    assert out["r"].status_code == 400 and out["r"].json()["error"]["code"] == "context_length_exceeded"
    assert slowest < 1.0, slowest
    print(f"{pings} /health while tokenizing; slowest {slowest * 1e3:.0f} ms")


def test_a_flood_past_the_waiting_limit_gets_429_and_the_accepted_finish(server):
    url, body = server["url"], {"model": NAME, "prompt": "count:", "max_tokens": 8, "temperature": 0}
    aclient = httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60)
    admission = server["app"].state.admission

    async def flood():
        accepted = [asyncio.create_task(aclient.post("/v1/completions", json=body))
                    for _ in range(MAX_SEQS + WAITING)]
        await asyncio.to_thread(wait_until, lambda: admission.in_flight == MAX_SEQS + WAITING, 60)
        refused = await asyncio.gather(*[aclient.post("/v1/completions", json=body) for _ in range(6)],
                                       aclient.post("/v1/completions", json={**body, "n": 2}))
        paused.__exit__()
        return await asyncio.gather(*accepted), refused
    paused = Paused(server).__enter__()
    try:
        accepted, refused = asyncio.run(flood())
    finally:
        paused.__exit__()
    for r in refused:
        assert r.status_code == 429 and is_openai_error(r) and r.headers["retry-after"] == "1", r.text
    assert [r.status_code for r in accepted] == [200] * (MAX_SEQS + WAITING)
    assert {r.json()["choices"][0]["text"] for r in accepted} == {accepted[0].json()["choices"][0]["text"]}
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in accepted)
    # more sequences than the server ever holds at once: a 400 (retrying cannot help)
    r = httpx.post(url + "/v1/completions", headers=AUTH, json={**body, "prompt": ["a"] * 8, "n": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"
    assert idle(server)


def test_the_api_key_guards_every_route_but_health(server):
    url = server["url"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                             ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/v1/nope")):
            r = httpx.request(method, url + path, headers=headers, json={"model": NAME, "prompt": "hi"})
            assert r.status_code == 401 and is_openai_error(r), (headers, path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/metrics").status_code == 200  # open unless metrics_need_key
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in c.models.list().data] == [NAME]
    assert c.completions.create(model=NAME, prompt="hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_metrics_behind_the_key_when_configured():
    """The ApiKey middleware on its own (no engine): /metrics is guarded with metrics_need_key, /health never."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from infer.server.middleware import ApiKey
    ok = lambda request: PlainTextResponse("ok")
    inner = Starlette(routes=[Route(p, ok) for p in ("/health", "/metrics", "/v1/models")])
    guarded = ApiKey(inner, key=KEY, open_paths=("/health",))

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://x") as h:
            return [(await h.get(p, headers=hd)).status_code for p in ("/health", "/metrics", "/v1/models")
                    for hd in ({}, AUTH)]
    assert asyncio.run(run()) == [200, 200, 401, 200, 401, 200]


def test_slow_headers_and_idle_connections_are_closed_and_keep_alive_is_bounded(server):
    port = server["port"]
    idle_conn = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing
    slow = socket.create_connection(("127.0.0.1", port), timeout=30)
    slow.sendall(b"GET /hea")  # a head that never completes
    for s in (idle_conn, slow):
        assert s.recv(1024) == b"", "the server kept a connection without a request head"  # closed (recv blocks)
        s.close()
    # a keep-alive connection serves max_requests_per_connection requests, the last one saying Connection: close
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        got = [h.get("/health").headers.get("connection") for _ in range(LIMITS.max_requests_per_connection)]
    assert got[-1] == "close" and "close" not in got[:-1], got


def metric(server, name, **labels):
    text = httpx.get(server["url"] + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples}.get((name, tuple(sorted(labels.items()))))


def test_after_an_injected_step_failure_metrics_show_nothing_running(server):
    eng = server["engine"].engine
    aborts_before = metric(server, "infer_requests_total", finish_reason="abort") or 0
    errors_before = metric(server, "infer_requests_total", finish_reason="error") or 0
    real, calls = eng.step, []

    def flaky():
        calls.append(1)
        if len(calls) == 3:  # the requests hold pages by now
            raise RuntimeError("injected device failure")
        return real()
    eng.step = flaky
    try:
        with httpx.Client(base_url=server["url"], headers=AUTH, timeout=60) as h:
            rs = []
            threads = [threading.Thread(target=lambda: rs.append(h.post("/v1/completions", json={
                "model": NAME, "prompt": "a b c d e f g", "max_tokens": 50, "temperature": 0}))) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    finally:
        eng.step = real
    assert sorted(r.status_code for r in rs) == [500] * 3 and all(is_openai_error(r) for r in rs)
    assert all(r.json()["error"]["code"] == "engine_error" for r in rs)
    assert wait_until(lambda: metric(server, "infer_requests_running") == 0
                      and metric(server, "infer_kv_pages_in_use") == 0, 30), "metrics still show the failed requests"
    assert metric(server, "infer_requests_waiting") == 0
    assert idle(server)
    assert metric(server, "infer_requests_total", finish_reason="error") == errors_before + 3
    assert (metric(server, "infer_requests_total", finish_reason="abort") or 0) == aborts_before  # not also aborts


def test_schemathesis_fuzzes_the_declared_request_bodies_without_a_5xx(server):
    """Bodies drawn from the OpenAPI schema (valid ones, then ones that break it): no 5xx, every status and body
    as the schema declares. Bounded: a fixed number of examples per route and mode."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)
    spec = server["app"].openapi()
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["model"]["enum"] == [NAME] and "max_tokens" in body["properties"]
    schema = schemathesis.openapi.from_dict(spec)
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if op.method.upper() == "POST"]
    assert len(ops) == 2
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen = []
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=hypothesis_examples(10), deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                r = case.call_and_validate(base_url=server["url"], headers=AUTH, checks=checks, timeout=60)
                seen.append(r.status_code)
            fuzz()
    assert 200 in seen and 400 in seen, sorted(set(seen))
    assert idle(server)


def test_limits_validate_themselves_admission_refuses_and_the_cli_builds_them(monkeypatch):
    import argparse

    from infer.cli.serve import add_serve_args, serve_limits
    from infer.server.limits import Admission
    from infer.server.protocol import APIError
    for field, value in (("max_body_bytes", 0), ("max_waiting_sequences", -1), ("timeout_headers_s", float("nan")),
                         ("api_key", ""), ("max_connections", 0), ("retry_after_s", True)):
        with pytest.raises(ValueError, match=field):
            ServerLimits(**{field: value})
    a = Admission(ServerLimits(max_waiting_sequences=2, retry_after_s=3), running_capacity=2)
    a.admit(3)
    with pytest.raises(APIError) as e:
        a.admit(2)
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "3"}
    a.release(3)
    a.admit(4)
    a.closing = True
    with pytest.raises(APIError) as e:
        a.admit(1)
    assert e.value.status == 503 and e.value.code == "shutting_down" and e.value.headers == {"Retry-After": "3"}
    p = argparse.ArgumentParser()
    add_serve_args(p)
    monkeypatch.delenv("INFER_API_KEY", raising=False)
    assert serve_limits(p.parse_args([])) == ServerLimits()
    monkeypatch.setenv("INFER_API_KEY", "from-env")
    assert serve_limits(p.parse_args([])).api_key == "from-env"
    got = serve_limits(p.parse_args(["--api-key", "flag", "--metrics-need-key", "--max-body-bytes", "1000"]))
    assert (got.api_key, got.metrics_need_key, got.max_body_bytes) == ("flag", True, 1000)


def test_a_request_that_still_breaks_the_step_fails_alone(server):
    """A request whose sampling row cannot be built (its top_k changed past every check, after it was queued)
    fails the step: it alone gets the engine's error, the requests beside it finish as they would have."""
    eng = server["engine"].engine
    body = {"model": NAME, "max_tokens": 12, "temperature": 0}
    prompts = [f"class C{i}:" for i in range(3)]
    with httpx.Client(base_url=server["url"], headers=AUTH, timeout=60) as h:
        control = [h.post("/v1/completions", json={**body, "prompt": p}).json()["choices"][0]["text"] for p in prompts]
    real_add = eng.add_request

    def add_then_break(prompt, sp, *a, **k):
        rid = real_add(prompt, sp, *a, **k)
        if len(prompt) == 1:  # the saboteur: a one-token prompt
            object.__setattr__(eng.requests[rid].sampling, "top_k", 2 ** 31)
        return rid
    rs = [None] * 4
    eng.add_request = add_then_break
    try:
        with Paused(server):  # all four queued before any step runs: they share the failing step
            def post(i, prompt):
                rs[i] = httpx.post(server["url"] + "/v1/completions", headers=AUTH, timeout=60,
                                   json={**body, "prompt": prompt})
            threads = [threading.Thread(target=post, args=(i, p)) for i, p in enumerate(prompts + [[5]])]
            for t in threads:
                t.start()
            assert wait_until(lambda: len(eng.requests) == 4, 60)
        for t in threads:
            t.join(60)
    finally:
        eng.add_request = real_add
    assert rs[3].status_code == 500 and rs[3].json()["error"]["code"] == "engine_error"
    assert "OverflowError" in rs[3].json()["error"]["message"]
    assert [r.json()["choices"][0]["text"] for r in rs[:3]] == control
    assert idle(server)


def test_a_connection_past_the_limit_gets_a_json_503_and_the_others_are_served():
    """The connection cap on its own (a bare app, no engine): a third connection of at most two is refused."""
    import uvicorn
    from fastapi import FastAPI
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    limits = ServerLimits(max_connections=2, timeout_headers_s=30.0, retry_after_s=2)
    srv = uvicorn.Server(uvicorn_config(app, limits, host="127.0.0.1", port=0, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    try:
        assert wait_until(lambda: srv.started or not th.is_alive()) and srv.started
        port = srv.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as b:
            assert wait_until(lambda: len(srv.server_state.connections) == 2, 30)
            r = httpx.get(f"http://127.0.0.1:{port}/health")
            assert r.status_code == 503 and is_openai_error(r) and r.headers["retry-after"] == "2"
            assert r.json()["error"]["code"] == "too_many_connections"
            a.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert a.recv(1024).startswith(b"HTTP/1.1 200")  # the ones already open are served
            b.close()
        assert wait_until(lambda: len(srv.server_state.connections) == 0, 30)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        srv.should_exit = True
        th.join(30)
