"""`python -m infer serve --speculative ngram`: the same text as without speculation (greedy, the official openai
client) and /metrics counting the engine's proposals and acceptances exactly (SmolLM2-135M-Instruct)."""
import threading

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import infer
from infer.config import SamplingParams
from infer.server.serve import build_app
from conftest import smollm2_group, wait_until

NAME = "smollm2-135m-instruct"
pytestmark = smollm2_group
PROMPT = "numbers = [1, 2, 3]\nnumbers = [1, 2, 3]\nnumbers = [1, 2, 3]\nnumbers"


@pytest.fixture(scope="module")
def server(smollm2):
    import uvicorn
    cfg, params, tok = smollm2
    app, engine = build_app(params, cfg, tok, NAME, num_pages=32, page_size=16, max_num_seqs=2,
                            max_num_batched_tokens=64, max_model_len=256, speculative="ngram",
                            num_speculative_tokens=4)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    assert wait_until(lambda: srv.started or not th.is_alive()) and srv.started, "the server did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "engine": engine, "cfg": cfg, "params": params, "tok": tok}
    srv.should_exit = True
    th.join(30)


def metric_values(url):
    return {s.name: s.value for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text)
            for s in fam.samples}


def test_speculative_server_text_equals_plain_greedy_and_metrics_count_it(server):
    c = openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)
    ref = infer.generate_text(server["params"], server["cfg"], server["tok"], PROMPT,
                              SamplingParams(temperature=0.0, max_new_tokens=24))
    got = c.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    assert got == ref.text
    eng = server["engine"].engine
    assert wait_until(lambda: server["engine"].num_active == 0 and eng.stats()["pages_in_use"] == 0, 60)
    s = eng.stats()
    assert s["spec_accepted_tokens"] > 0, "prompt lookup never hit on a repeating prompt"
    want = {f"infer_{k}_total": float(s[k]) for k in ("spec_proposed_tokens", "spec_accepted_tokens",
                                                       "spec_verify_runs", "spec_emitted_tokens")}
    assert wait_until(lambda: {k: metric_values(server["url"]).get(k) for k in want} == want, 10)
