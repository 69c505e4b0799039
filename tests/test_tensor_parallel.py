"""Tensor parallelism on 8 host devices: the same logits and tokens as one device, the expected collectives,
1/TP of the parameters per device, vLLM-style KV-head replication, refusals by name.

Runs in a subprocess with 8 forced host devices (the flag must be set before JAX starts).
"""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_xla_flags

COMMON = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    import infer
    from infer.config import ConfigError, SamplingParams
    from infer.engine import Engine
    from infer.parallel.tensor_parallel import prepare_tensor_parallel, shard_pools
    from infer.model.rows import extend_rows
    assert jax.device_count() == 8, jax.devices()

    def mesh_of(dp, tp):
        return Mesh(np.array(jax.devices()[:dp * tp]).reshape(dp, tp), ("data", "model"))

    def model(K, N=8, H=8):
        cfg = infer.ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=N, n_kv_heads=K, head_dim=H,
                                d_ff=128, max_seq_len=128, dtype="float32")
        params = infer.init_params(cfg, jax.random.PRNGKey(K))
        return cfg, jax.tree_util.tree_map(lambda x: x * 1.5 if x.ndim > 2 else x, params)

    def logits_run(params, cfg, mesh, toks):
        cache = infer.init_cache(cfg, 2, 64, page_size=8)
        if mesh is not None:
            cfg, params = prepare_tensor_parallel(params, cfg, mesh)
            cache["kv"] = shard_pools(cache["kv"], mesh)
        out = []
        lg, cache = infer.prefill(params, cfg, toks[:, :16], np.array([16, 11]), cache)
        out.append(np.asarray(lg))
        for t in range(40):
            lg, cache = infer.decode_step(params, cfg, toks[:, 16 + t], cache)
            out.append(np.asarray(lg))
        return np.stack(out), cache

    rng = np.random.RandomState(0)
    toks = rng.randint(0, 128, (2, 56)).astype(np.int32)
    prompts = [rng.randint(0, 128, n).tolist() for n in (5, 13, 9)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=12)

    cfg, params = model(K=4)
    from infer.generation.speculative import speculative_generate, truncated_draft
    dparams, dcfg = truncated_draft(params, cfg, 1)
    want_tokens = infer.generate(params, cfg, prompts, sp).tokens
    assert len({tuple(t) for t in want_tokens}) > 1
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
    norms = sum(x.nbytes for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]
                if kp[-1].key == "scale")  # RMSNorm weights: replicated
""")

# Two halves of the checks, each in its own 8-device process, so two xdist workers run them side by side.
PARTS = {
    "tp-logits-hlo-refusals": (textwrap.dedent("""
    want_logits, _ = logits_run(params, cfg, None, toks)
    for dp, tp in ((1, 4), (2, 2)):  # (1, 2) adds nothing these two do not cover (the engine, Pallas and K = 3
        # checks below run on TP = 2)
        mesh = mesh_of(dp, tp)
        got, cache = logits_run(params, cfg, mesh, toks)
        err = np.abs(got - want_logits).max()
        assert err <= 1e-5, (dp, tp, err)
        assert infer.generate(params, cfg, prompts, sp, mesh=mesh).tokens == want_tokens, (dp, tp)
        if dp == 1:  # speculative decoding, target and draft both split, gives the same greedy tokens
            spec = speculative_generate(params, cfg, dparams, dcfg, prompts, sp, k=3, mesh=mesh)
            assert spec.tokens == want_tokens, (dp, tp)
        _, sp_params = prepare_tensor_parallel(params, cfg, mesh)
        dev0 = jax.devices()[0]
        mine = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(sp_params) for s in x.addressable_shards
                   if s.device == dev0)
        assert mine == (total - norms) / tp + norms, (tp, mine, total, norms)
        k_shard = cache["kv"]["k"].addressable_shards[0].data.shape
        assert k_shard[2] == 4 // tp, k_shard  # [L, P, K/TP, Z, H]
        print(f"TP_OK dp={dp} tp={tp} max_err={err:.2e}")

    # The compiled TP decode step: all-reduces after the row-parallel projections, no all-gather of the pools.
    mesh = mesh_of(1, 4)
    tcfg, tparams = prepare_tensor_parallel(params, cfg, mesh)
    cache = infer.init_cache(tcfg, 2, 64, page_size=8)
    cache["kv"] = shard_pools(cache["kv"], mesh)
    hlo = jax.jit(lambda p, t, c: extend_rows(p, tcfg, t, jnp.ones((2,), jnp.int32), c), donate_argnums=2).lower(
        tparams, jnp.zeros((2, 1), jnp.int32), cache).compile().as_text()
    n_ar = len(re.findall(r"= [^ ]+ all-reduce\\(", hlo)) + len(re.findall(r"all-reduce-start\\(", hlo))
    assert n_ar >= 2, n_ar
    gathers = [ln for ln in hlo.splitlines() if "all-gather" in ln]
    full_pool = "f32[%s]" % ",".join(str(d) for d in cache["kv"]["k"].shape)
    assert not any(full_pool in ln for ln in gathers), [ln[:200] for ln in gathers]
    print(f"HLO_OK all_reduces={n_ar} all_gathers={len(gathers)}")

    for bad, needle in ((dict(d_ff=100), "d_ff: 100 is not divisible by the tensor-parallel degree 8"),
                        (dict(vocab_size=130), "vocab_size: 130 is not divisible"),
                        (dict(n_heads=6, n_kv_heads=3), "n_heads: 6 is not divisible")):
        try:
            prepare_tensor_parallel(params, cfg.replace(**bad), mesh_of(1, 8))
        except ConfigError as e:
            assert needle in str(e), str(e)
        else:
            raise AssertionError(f"{bad} was not refused")
    print("REFUSALS_OK")
"""), ("TP_OK dp=1 tp=4", "TP_OK dp=2 tp=2", "HLO_OK", "REFUSALS_OK")),
    "engine-pallas-dp-replication": (textwrap.dedent("""
    # The engine on a TP mesh serves the same tokens.
    engine = Engine(params, cfg, num_pages=64, page_size=4, max_num_seqs=3, max_num_batched_tokens=8,
                    mesh=mesh_of(1, 2))
    ids = [engine.add_request(p, sp) for p in prompts]
    outs = engine.run_to_completion()
    assert [outs[i].token_ids for i in ids] == want_tokens
    print("ENGINE_OK")

    # The Pallas kernels (interpret mode here) run per head shard under shard_map: same tokens, and the
    # compiled step gathers no pool.
    rcfg, hparams = model(K=4, H=16)  # Triton tiles: head dim >= 16
    pcfg = rcfg.replace(attention_impl="pallas")
    few = [p[:6] for p in prompts[:2]]
    short = SamplingParams(temperature=0.0, max_new_tokens=4)
    assert infer.generate(hparams, pcfg, few, short, mesh=mesh_of(1, 2)).tokens == \
        infer.generate(hparams, rcfg, few, short).tokens
    from infer.parallel.tensor_parallel import mesh_context
    m2 = mesh_of(1, 2)
    pc, pp = prepare_tensor_parallel(hparams, pcfg, m2)
    pcache = infer.init_cache(pc, 2, 64, page_size=8)
    pcache["kv"] = shard_pools(pcache["kv"], m2)
    with mesh_context(m2):
        phlo = jax.jit(lambda p, t, c: extend_rows(p, pc, t, jnp.ones((2,), jnp.int32), c), donate_argnums=2).lower(
            pp, jnp.zeros((2, 1), jnp.int32), pcache).compile().as_text()
        jaxpr = str(jax.make_jaxpr(lambda p, t, c: extend_rows(p, pc, t, jnp.ones((2,), jnp.int32), c))(
            pp, jnp.zeros((2, 1), jnp.int32), pcache))
    assert "shard_map" in jaxpr  # the kernel runs per shard, not partitioned by GSPMD
    full_pool = "f32[%s]" % ",".join(str(d) for d in pcache["kv"]["k"].shape)
    assert not any(full_pool in ln for ln in phlo.splitlines() if "all-gather" in ln)
    print("PALLAS_TP_OK")

    # Data parallel x tensor parallel = 2 x 2: two replicas with their own pools, least-loaded placement.
    from infer.engine import DataParallelEngine
    from infer.parallel.tensor_parallel import make_mesh
    dpe = DataParallelEngine(params, cfg, mesh=make_mesh(2, 2), num_pages=64, page_size=4, max_num_seqs=3,
                             max_num_batched_tokens=8)
    ids = [dpe.add_request(p, sp) for p in prompts]
    assert [len(e.requests) for e in dpe.replicas] == [2, 1]  # placed on the least-loaded replica
    assert dpe.replicas[1].kv["k"].sharding.device_set == set(jax.devices()[2:4])
    outs = dpe.run_to_completion()
    assert [outs[i].token_ids for i in ids] == want_tokens
    assert dpe.stats()["pages_in_use"] == 0 and not dpe._owner
    # A stream on one replica keeps another replica's request: both finish with their own tokens.
    other = dpe.add_request(prompts[1], sp)
    streamed = [t for u in dpe.stream(prompts[0], sp) for t in u.new_token_ids]
    assert streamed == want_tokens[0] and dpe.run_to_completion()[other].token_ids == want_tokens[1]
    # vLLM's switches build the same 2 x 2 engine (the step shapes above: the engine's default 256-token step on
    # four host devices was a third of this process's time)
    llm = infer.LLM.from_params(params, cfg, tensor_parallel_size=2, data_parallel_size=2, num_pages=64, page_size=4,
                                max_num_seqs=3, max_num_batched_tokens=8)
    assert [o.token_ids for o in llm.generate(prompts, sp, use_tqdm=False)] == want_tokens
    print("DP_OK")

    # K = 3 on TP = 2 (each KV head's projection repeated twice: 6 heads, 3 per device), same tokens.
    cfg3, params3 = model(K=3, N=6)
    want3 = infer.generate(params3, cfg3, prompts, sp).tokens
    assert infer.generate(params3, cfg3, prompts, sp, mesh=mesh_of(1, 2)).tokens == want3
    tcfg3, _ = prepare_tensor_parallel(params3, cfg3, mesh_of(1, 2))
    assert tcfg3.n_kv_heads == 6
    print("REPLICATION_OK")

"""), ("ENGINE_OK", "PALLAS_TP_OK", "DP_OK", "REPLICATION_OK")),
}


@pytest.mark.parametrize("part", sorted(PARTS))
def test_tensor_parallel_equals_one_device(part):
    script, tags = PARTS[part]
    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=8"),
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", COMMON + script], env=env, cwd=root, capture_output=True, text=True,
                       timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    for tag in tags:
        assert tag in r.stdout, r.stdout
