"""The isolated CPU timings behind BENCHMARKS.md "SmolLM2-135M on CPU" (one command, side by side):

    python scripts/cpu_dot_probe.py

1. The LM-head-sized dot x [B, 576] @ W [576, 49152] in float32 and in bfloat16 (float32
   accumulation), B in {1, 2, 8}: XLA CPU has no fast bfloat16 dot.
2. Greedy sampling of [B, 49152] logits: the full path (filters + a categorical draw per row,
   then argmax for temperature-0 rows, as `sample` did before) against `infer.sampling.sample`
   (which skips the draw when every row is greedy) and jnp.argmax against `greedy_tokens`.
Each is jitted, warmed up, timed with block_until_ready, median of --repeats (alternating).
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import SamplingParams
from infer.sampling import filter_logits, sample
from infer.sampling.filters import greedy_tokens

D, V = 576, 49152


def median_ms(fns, args, repeats):
    """Median ms of each jitted fn on args, the fns alternating so load affects them alike."""
    for f in fns:
        jax.block_until_ready(f(*args))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(t) for t in times]


def old_sample(logits_BV, samp, keys_B):
    """`sample` as it was: the filters and a draw for every row, argmax kept for greedy rows."""
    drawn = jax.vmap(jax.random.categorical)(keys_B, filter_logits(logits_BV, samp))
    return jnp.where(samp["temperature"] <= 0, jnp.argmax(logits_BV, axis=-1), drawn).astype(jnp.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    w32 = jnp.asarray(rng.standard_normal((D, V)), jnp.float32)
    w16 = w32.astype(jnp.bfloat16)
    dot = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
    print(f"JAX {jax.__version__} on {jax.default_backend()}; median of {a.repeats}")
    print("| B | f32 dot ms | bf16 dot ms | bf16 / f32 |\n|---|---|---|---|")
    for B in (1, 2, 8):
        x = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
        t32, = median_ms([dot], (x, w32), a.repeats)
        t16, = median_ms([dot], (x.astype(jnp.bfloat16), w16), a.repeats)
        print(f"| {B} | {t32:.2f} | {t16:.2f} | {t16 / t32:.1f}x |")
    print("\n| B | old greedy sample ms | sample ms | jnp.argmax ms | greedy_tokens ms |\n|---|---|---|---|---|")
    for B in (1, 8):
        logits = jnp.asarray(rng.standard_normal((B, V)), jnp.float32)
        samp = SamplingParams(temperature=0.0).arrays(B)
        keys = jax.random.split(jax.random.PRNGKey(0), B)
        t_old, t_new = median_ms([jax.jit(old_sample), jax.jit(sample)], (logits, samp, keys), a.repeats)
        t_am, t_gt = median_ms([jax.jit(lambda l: jnp.argmax(l, -1)), jax.jit(greedy_tokens)], (logits,), a.repeats)
        print(f"| {B} | {t_old:.2f} | {t_new:.2f} | {t_am:.2f} | {t_gt:.2f} |")


if __name__ == "__main__":
    main()
