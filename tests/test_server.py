"""The OpenAI-compatible server, driven by the official `openai` client over loopback (SmolLM2-135M-Instruct).

Outputs are compared with the single-request paths (`infer.generate_text`, `infer.chat`) and with the same
request served alone; pages in use are read from the engine and from /metrics.
"""
import asyncio
import json
import re
import socket

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import infer
from infer.config import SamplingParams
from infer.server.serve import build_app
from conftest import serving, smollm2_group, wait_until

NAME = "smollm2-135m-instruct"
pytestmark = smollm2_group
MAX_LEN = 512


@pytest.fixture(scope="module")
def server(smollm2):
    import uvicorn
    cfg, params, tok = smollm2
    app, engine = build_app(params, cfg, tok, NAME, num_pages=160, page_size=16, max_num_seqs=16,
                            max_num_batched_tokens=64, max_model_len=MAX_LEN)
    with serving(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"), engine) as port:
        yield {"url": f"http://127.0.0.1:{port}", "engine": engine, "cfg": cfg, "params": params, "tok": tok}


def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)


def wait_idle(server, timeout=120.0):
    """Pages in use back to 0 (the idle value: finished prompts stay only as evictable cache). The timeout only
    bounds a hang: a request the server does not abort runs to its end, 400 tokens on a loaded CPU."""
    eng = server["engine"].engine
    return wait_until(lambda: server["engine"].num_active == 0 and eng.stats()["pages_in_use"] == 0, timeout)


def test_completion_and_chat_streamed_and_not(server):
    c, tok = client(server), server["tok"]
    prompt = "def fibonacci(n):"
    ref = infer.generate_text(server["params"], server["cfg"], tok, prompt,
                              SamplingParams(temperature=0.0, max_new_tokens=20))
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tok.encode(prompt)) and r.usage.completion_tokens == len(ref.token_ids) == 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    chunks = list(c.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens

    conv = [{"role": "user", "content": "What is the capital of France?"}]
    want = infer.chat(server["params"], server["cfg"], tok, conv, SamplingParams(temperature=0.0, max_new_tokens=32))
    r = c.chat.completions.create(model=NAME, messages=conv, max_tokens=32, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop" and "Paris" in want
    assert r.usage.prompt_tokens == len(tok.chat_template.encode(tok, conv))
    chunks = list(c.chat.completions.create(model=NAME, messages=conv, max_tokens=32, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert wait_idle(server)


def test_token_prompts_n_samples_logprobs_and_stop(server):
    c, tok = client(server), server["tok"]
    ids = tok.encode("import numpy as np\n")
    r = c.completions.create(model=NAME, prompt=ids, max_tokens=8, temperature=0.8, seed=3, n=3, logprobs=1)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == sum(len(ch.logprobs.tokens) for ch in r.choices) == 24
    assert all(lp <= 0 for ch in r.choices for lp in ch.logprobs.token_logprobs)
    again = c.completions.create(model=NAME, prompt=ids, max_tokens=8, temperature=0.8, seed=3, n=3)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]  # a seed reproduces
    full = c.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=24, temperature=0).choices[0].text
    stop = full[10:13]
    cut = c.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_32_concurrent_streams_each_equal_to_the_request_alone(server):
    c = client(server)
    prompts = [f"def function_{i}(x):" for i in range(8)]
    alone = [c.completions.create(model=NAME, prompt=p, max_tokens=12, temperature=0).choices[0].text for p in prompts]
    aclient = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)

    async def one(p):
        stream = await aclient.completions.create(model=NAME, prompt=p, max_tokens=12, temperature=0, stream=True)
        return "".join([ch.choices[0].text async for ch in stream if ch.choices])

    async def all_():
        return await asyncio.gather(*[one(prompts[i % 8]) for i in range(32)])
    got = asyncio.run(all_())
    assert got == [alone[i % 8] for i in range(32)]
    assert wait_idle(server)


def test_a_client_that_goes_away_frees_its_pages(server):
    body = {"model": NAME, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400, "temperature": 0}  # counts on
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        with h.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got) and not any("[DONE]" in x for x in got)
            assert server["engine"].engine.stats()["pages_in_use"] > 0
        # closed mid-stream
    assert wait_idle(server)
    # A non-streamed request whose client hangs up while it is being served (not after a fixed read timeout,
    # which a fast GPU beats): sent on a raw socket, closed once the engine runs it and before any response.
    host, port = server["url"].removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(payload), payload))
        assert wait_until(lambda: server["engine"].num_active > 0, interval=0.001), "the request never ran"
        s.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing answered yet: the client leaves mid-request
            s.recv(1)
    assert wait_idle(server)
    assert client(server).completions.create(model=NAME, prompt="1, 2, 3,", max_tokens=4, temperature=0).choices


BAD = [
    ({"model": "gpt-4", "prompt": "hi"}, "model"),
    ({"model": NAME, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"model": NAME, "prompt": "hi", "max_tokens": 10 ** 9}, "max_tokens"),
    ({"model": NAME, "prompt": "hi", "max_tokens": "10"}, "max_tokens"),
    ({"model": NAME, "prompt": "hi", "temperature": 5}, "temperature"),
    ({"model": NAME, "prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"model": NAME, "prompt": "hi", "top_p": 0}, "top_p"),
    ({"model": NAME, "prompt": "hi", "n": 0}, "n"),
    ({"model": NAME, "prompt": "hi", "stream": "yes"}, "stream"),
    ({"model": NAME, "prompt": "hi", "seed": -1}, "seed"),
    ({"model": NAME, "prompt": "hi", "stop": [1, 2]}, "stop"),
    ({"model": NAME, "prompt": 123}, "prompt"),
    ({"model": NAME, "prompt": [1, 2, 10 ** 7]}, "prompt"),
    ({"model": NAME, "prompt": "word " * 600, "max_tokens": 4}, "prompt"),
    ({"model": NAME, "prompt": "hi there", "max_tokens": MAX_LEN - 1}, "max_tokens"),
    ({"model": NAME, "prompt": "hi", "presence_penalty": 2.5}, "presence_penalty"),
    ({"model": NAME, "prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"model": NAME, "prompt": "hi", "logit_bias": {"1": 101}}, "logit_bias"),
    ({"model": NAME, "prompt": "hi", "logit_bias": {"99999999": 1}}, "logit_bias"),  # past the vocabulary
    ({"model": NAME, "prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"model": NAME, "prompt": "hi", "echo": True, "logprobs": 1}, "echo"),  # prompt logprobs: not supported
    ({"model": NAME, "prompt": "hi", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ({"model": NAME, "prompt": "hi", "ignore_eos": "yes"}, "ignore_eos"),
    ({"prompt": "hi"}, "model"),
]


def test_every_bad_input_gets_a_400_naming_the_field_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        for body, field in BAD:
            r = h.post("/v1/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["param"] == field and field in err["message"] and err["type"] == "invalid_request_error"
        for path, body, field in [("/v1/chat/completions", {"model": NAME, "messages": "hi"}, "messages"),
                                  ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "bot"}]},
                                   "messages[0]"),
                                  ("/v1/chat/completions", {"model": NAME, "messages": [
                                      {"role": "user", "content": "hi"}], "max_completion_tokens": 0},
                                   "max_completion_tokens"),
                                  ("/v1/chat/completions", {"model": NAME, "messages": [
                                      {"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
                                  ("/v1/chat/completions", {"model": NAME, "messages": [
                                      {"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
                                   "top_logprobs")]:
            r = h.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
        r = h.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert h.get("/health").json() == {"status": "ok"}
    r = client(server).completions.create(model=NAME, prompt="Hello", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert wait_idle(server)


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def test_structured_outputs_json_schema_json_object_and_regex_streamed_and_not(server):
    import jsonschema
    c = client(server)
    msgs = [{"role": "user", "content": "Describe a person as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=48, temperature=0, response_format=fmt)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), PERSON)
    chunks = list(c.chat.completions.create(model=NAME, messages=msgs, max_tokens=48, temperature=0,
                                            response_format=fmt, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    r = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=48, temperature=0,
                                  response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a free-form object may run past max_tokens
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")
    rx = r"\(?[0-9]{3}\)? [0-9]{3}-[0-9]{4}"
    r = c.completions.create(model=NAME, prompt="Call me at", max_tokens=16, temperature=0.7, seed=1,
                             extra_body={"guided_regex": rx})
    assert r.choices[0].finish_reason == "stop" and re.fullmatch(rx, r.choices[0].text), r.choices[0].text
    r = c.completions.create(model=NAME, prompt="Is the sky blue? Answer:", max_tokens=4, temperature=0,
                             extra_body={"guided_choice": ["yes", "no (really)"]})
    assert r.choices[0].text in ("yes", "no (really)")
    assert wait_idle(server)


BAD_FORMATS = [
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"guided_regex": "[a-"}, "guided_regex"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
    ({"guided_json": 5}, "guided_json"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
]


def test_a_bad_structured_output_request_gets_a_400_naming_the_field(server):
    with httpx.Client(base_url=server["url"], timeout=30) as h:
        for extra, field in BAD_FORMATS:
            for path, body in [("/v1/completions", {"model": NAME, "prompt": "hi"}),
                               ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "hi"}]})]:
                r = h.post(path, json=body | extra)
                assert r.status_code == 400, (extra, r.text)
                err = r.json()["error"]
                assert err["param"] == field and field in err["message"], (extra, err)
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nope"}}})
    assert e.value.body["param"] == "response_format" and "nope" in e.value.body["message"]
    assert wait_idle(server)


def metric_values(server):
    text = httpx.get(server["url"] + "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_move_by_the_expected_amounts(server):
    assert wait_idle(server)
    before = metric_values(server)
    c = client(server)
    for p in ("one two three", "alpha beta"):
        c.completions.create(model=NAME, prompt=p, max_tokens=5, temperature=0)
    tok = server["tok"]
    want = {("infer_requests_total", (("finish_reason", "length"),)): 2,
            ("infer_generation_tokens_total", ()): 10,
            ("infer_prompt_tokens_total", ()): len(tok.encode("one two three")) + len(tok.encode("alpha beta")),
            ("infer_time_to_first_token_seconds_count", ()): 2,
            ("infer_e2e_request_latency_seconds_count", ()): 2,
            ("infer_inter_token_latency_seconds_count", ()): 2 * 4}
    snap = {}

    def moved():  # the engine thread records metrics right after the step that finishes: poll until they move
        snap["after"] = after = metric_values(server)
        return {k: after.get(k, 0) - before.get(k, 0) for k in want} == want and \
            after[("infer_kv_pages_in_use", ())] == 0
    wait_until(moved, timeout=30)
    after = snap["after"]
    assert {k: after.get(k, 0) - before.get(k, 0) for k in want} == want
    assert after[("infer_kv_pages_in_use", ())] == 0
    assert after[("infer_kv_pages_total", ())] == 160
    assert ("infer_preemptions_total", ()) in after and ("infer_prefix_cache_hit_rate", ()) in after


def raw_logprobs(server, ids):
    """log_softmax of the uncached forward pass's logits at every position of `ids` [T, V] (an independent
    reference for the served top_logprobs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from infer.model.forward import forward
    logits = forward(server["params"], server["cfg"], jnp.asarray([ids], jnp.int32))[0]
    return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))


def test_top_logprobs_streamed_and_not_are_the_log_softmax_of_the_step_logits(server):
    import numpy as np
    c, tok = client(server), server["tok"]
    prompt, N, T = "The quick brown fox", 4, 6
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=T, temperature=0, logprobs=N)
    lp = r.choices[0].logprobs
    ids = tok.encode(prompt)
    out_ids = tok.encode(prompt + r.choices[0].text)[len(ids):]
    ref = raw_logprobs(server, ids + out_ids)[len(ids) - 1:len(ids) - 1 + T]
    assert len(lp.top_logprobs) == T == len(lp.token_logprobs)
    for alts, chosen_lp, row in zip(lp.top_logprobs, lp.token_logprobs, ref):
        want = np.argsort(-row, kind="stable")[:N]
        assert list(alts) == [tok.decode([int(t)], skip_special_tokens=False) for t in want]
        np.testing.assert_allclose(list(alts.values()), row[want], atol=2e-3)
        assert list(alts.values()) == sorted(alts.values(), reverse=True)
        assert abs(chosen_lp - max(alts.values())) < 1e-6  # greedy: the chosen token is the top one
    chunks = list(c.completions.create(model=NAME, prompt=prompt, max_tokens=T, temperature=0, logprobs=N,
                                       stream=True))
    streamed = [a for ch in chunks if ch.choices and ch.choices[0].logprobs for a in ch.choices[0].logprobs.top_logprobs]
    # the same tokens; log p to float32 rounding (a prefix-cache hit computes the prompt in other chunks)
    assert [list(a) for a in streamed] == [list(a) for a in lp.top_logprobs]
    np.testing.assert_allclose([list(a.values()) for a in streamed], [list(a.values()) for a in lp.top_logprobs],
                               atol=1e-4)

    conv = [{"role": "user", "content": "Name a colour."}]
    r = c.chat.completions.create(model=NAME, messages=conv, max_tokens=T, temperature=0, logprobs=True,
                                  top_logprobs=N)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    prompt_ids = tok.chat_template.encode(tok, conv)
    out_ids = [int(np.argsort(-raw_logprobs(server, prompt_ids)[-1])[0])]  # the first token: greedy, top of ref
    assert content[0].token == tok.decode(out_ids, skip_special_tokens=False)
    for entry in content:
        assert len(entry.top_logprobs) == N and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == entry.logprob
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs),
                                                                 reverse=True)
        assert all(a.bytes == list(a.token.encode("utf-8")) for a in entry.top_logprobs)
    chunks = list(c.chat.completions.create(model=NAME, messages=conv, max_tokens=T, temperature=0, logprobs=True,
                                            top_logprobs=N, stream=True))
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [[a.token for a in e.top_logprobs] for e in streamed] == [[a.token for a in e.top_logprobs]
                                                                      for e in content]
    np.testing.assert_allclose([[a.logprob for a in e.top_logprobs] for e in streamed],
                               [[a.logprob for a in e.top_logprobs] for e in content], atol=1e-4)
    assert wait_idle(server)


def test_penalties_bias_min_tokens_ignore_eos_and_echo_are_honoured(server):
    c, tok = client(server), server["tok"]
    prompt = "1, 1, 1, 1, 1, 1,"
    plain = c.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0).choices[0].text
    # a penalty-laden request is served (it used to be refused with a 400)
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, presence_penalty=1.0,
                             frequency_penalty=2.0, extra_body={"repetition_penalty": 1.5})
    assert r.choices[0].text != plain and r.usage.completion_tokens == 8
    x = tok.encode(" x")[-1]
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=5, temperature=0.7, seed=1,
                             logit_bias={str(x): 100}, logprobs=0)
    assert r.choices[0].text == tok.decode([x] * 5) and r.choices[0].logprobs.top_logprobs is None

    conv = [{"role": "user", "content": "What is the capital of France?"}]
    short = c.chat.completions.create(model=NAME, messages=conv, max_tokens=32, temperature=0)
    assert short.choices[0].finish_reason == "stop"  # ends on the end-of-turn token
    n = short.usage.completion_tokens
    held = c.chat.completions.create(model=NAME, messages=conv, max_tokens=n + 6, temperature=0,
                                     extra_body={"min_tokens": n + 2})
    assert held.usage.completion_tokens >= n + 2 and held.choices[0].message.content.startswith(
        short.choices[0].message.content)
    long = c.chat.completions.create(model=NAME, messages=conv, max_tokens=n + 4, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == n + 4

    r = c.completions.create(model=NAME, prompt="Hello, my name is", max_tokens=4, temperature=0, echo=True)
    chunks = list(c.completions.create(model=NAME, prompt="Hello, my name is", max_tokens=4, temperature=0,
                                       echo=True, stream=True))
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert r.choices[0].text.startswith("Hello, my name is") and streamed == r.choices[0].text
    ids = tok.encode("Hi there")
    r = c.completions.create(model=NAME, prompt=ids, max_tokens=2, temperature=0, echo=True)
    assert r.choices[0].text.startswith(tok.decode(ids))
    assert wait_idle(server)
