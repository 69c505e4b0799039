"""infer.LLM: offline batches through the engine, outputs in input order, equal to each prompt generated alone."""
import dataclasses

import numpy as np
import pytest

import infer
from infer.config import SamplingParams

SP = SamplingParams(temperature=0.0, max_new_tokens=12)


def test_outputs_come_in_input_order_and_equal_generate(tiny):
    cfg, params = tiny
    llm = infer.LLM.from_params(params, cfg, num_pages=64, page_size=4, max_num_seqs=3, max_num_batched_tokens=16)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, size=int(k)).tolist() for k in rng.integers(1, 30, size=7)]
    per = [dataclasses.replace(SP, max_new_tokens=4 + i) for i in range(7)]
    outs = llm.generate(prompts, per, use_tqdm=True)
    for p, sp, o in zip(prompts, per, outs):
        assert o.prompt_token_ids == p
        assert o.token_ids == infer.generate(params, cfg, [p], sp).tokens[0]
        assert o.finish_reason == "length" and o.metrics.ttft_s > 0


def test_a_bad_prompt_refuses_the_whole_batch_and_leaves_nothing_queued(tiny):
    cfg, params = tiny
    llm = infer.LLM.from_params(params, cfg, num_pages=64, page_size=4, max_num_seqs=3, max_num_batched_tokens=16)
    with pytest.raises(infer.RequestError, match=r"-2': token id 999 outside"):
        llm.generate([[1, 2], [3, 4], [5, 999]], SP, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.stats()["pages_in_use"] == 0
    assert llm.generate([[1, 2]], SP, use_tqdm=False)[0].token_ids == infer.generate(params, cfg, [[1, 2]], SP).tokens[0]


NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    return infer.LLM(NAME, num_pages=64, page_size=16, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=512)


def test_smollm2_text_and_chat_equal_the_single_request_paths(smollm2):
    llm = smollm2
    prompts = ["def fibonacci(n):", "The capital of France is", "import numpy as np\n"]
    outs = llm.generate(prompts, SP, use_tqdm=False)
    for p, o in zip(prompts, outs):
        ref = infer.generate_text(llm.params, llm.cfg, llm.tokenizer, p, SP)
        assert o.token_ids == ref.token_ids and o.text == ref.text
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    reply = llm.chat([conv], SamplingParams(temperature=0.0, max_new_tokens=24), use_tqdm=False)[0]
    assert reply.text == infer.chat(llm.params, llm.cfg, llm.tokenizer, conv,
                                    SamplingParams(temperature=0.0, max_new_tokens=24))
    assert "Paris" in reply.text
