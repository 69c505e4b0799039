"""The serving engine on a mixture-of-experts model: a request's tokens do not depend on its batch neighbours."""
import jax
import numpy as np
from conftest import make_cfg, serve_requests

import infer
from infer.engine import Engine


def test_engine_mix_equals_each_request_alone():
    """A token's routing reads that token only, so a request's greedy tokens do not depend on its batch
    neighbours: staggered arrivals (decode tokens and prompt chunks of others in the same steps) through the engine
    equal each prompt alone through a fresh engine."""
    cfg = make_cfg(vocab_size=97, n_layers=1, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24)
    params = infer.init_params(cfg, jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in (7, 3, 6)]
    greedy = infer.SamplingParams(temperature=0.0, max_new_tokens=6)
    engine = lambda: Engine(params, cfg, num_pages=32, page_size=4, max_num_seqs=4, max_num_batched_tokens=8)
    outs = serve_requests(engine(), prompts, greedy, arrivals=[0, 1, 2])
    for p, o in zip(prompts, outs):
        assert o.token_ids == serve_requests(engine(), [p], greedy)[0].token_ids
    assert len({tuple(o.token_ids) for o in outs}) > 1
