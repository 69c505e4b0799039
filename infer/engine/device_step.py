"""The engine's one device call per step: page copies, the ragged model step, and sampling.

    engine_step(params, cfg, tokens_T, meta, kv, copy_src_C, copy_dst_C, sample_rows_S, positions_S, samp,
                poison_P=None) -> (tokens_S, logprobs_S, (top_ids_SN, top_logprobs_SN), kv)

1. copy-on-write: page copy_src_C[c] -> copy_dst_C[c] in every pool array (entries with
   dst = P are padding and dropped);
2. (debugging) pages with poison_P set are overwritten with NaN (their scales for int8
   pools), so a page handed to a new owner with its old data is caught by the tests;
3. the model's ragged step (infer/model/step.py) over the flat batch;
4. S samples: sample s draws from logits row sample_rows_S[s] with its own settings
   and the key (seed_S[s], positions_S[s]); a prompt with n samples has n entries
   pointing at one row. When samp holds the logits processors' arrays (infer/sampling/processors.py:
   penalties, logit bias, min_tokens) they run first, on the sampled rows. Also returns log p of each
   drawn token under the raw logits, and the top N = 20 (ids, log p) of those when a row asks (zeros
   otherwise; N = 0 when samp has no processors' arrays).
   With samp["token_bitmask"] ([S, W] int32, structured outputs: infer/sampling/token_mask.py)
   a row draws only among the tokens its bits allow (all ones: every token; a step with no
   constrained row skips the unpacking), so a constrained request never recompiles.

Shapes are fixed by the engine (T, R, M, O, S, C), so a new mix of requests reuses the
compiled program; only the static max_q_len bucket selects among a few programs.
"""
import jax
import jax.numpy as jnp

from infer.config.xla_flags import LOOP_COMPILER_OPTIONS
from infer.model.step import run_step
from infer.sampling import request_keys, sample
from infer.sampling.processors import apply_processors, split, top_logprobs
from infer.sampling.token_mask import apply_token_bitmask


def copy_pages(kv: dict, src_C, dst_C) -> dict:
    """Copy whole pages src -> dst in every pool array ([L, P, ...]); dst out of range drops the copy."""
    return {name: x.at[:, dst_C].set(x[:, src_C], mode="drop") for name, x in kv.items()}


def poison_pages(kv: dict, poison_P) -> dict:
    """NaN into the marked pages of every floating-point pool array (int8 values keep theirs; their scales go NaN)."""
    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        mask = poison_P.reshape((1, -1) + (1,) * (x.ndim - 2))
        return jnp.where(mask, jnp.asarray(jnp.nan, x.dtype), x)
    return {name: one(x) for name, x in kv.items()}


def run_engine_step(params, cfg, tokens_T, meta, kv, copy_src_C, copy_dst_C, sample_rows_S, positions_S, samp,
                    poison_P=None):
    """engine_step unjitted, for use inside other jitted programs (infer/perf/gpu_program.py)."""
    kv = copy_pages(kv, copy_src_C, copy_dst_C)
    if poison_P is not None:
        kv = poison_pages(kv, poison_P)
    logits_OV, kv = run_step(params, cfg, tokens_T, meta, kv)
    logits_SV = logits_OV[sample_rows_S]
    samp, proc = split(samp)
    samp = dict(samp)
    bitmask_SW = samp.pop("token_bitmask", None)
    processed_SV = apply_processors(logits_SV, proc)
    allowed_SV = processed_SV if bitmask_SW is None else apply_token_bitmask(processed_SV, bitmask_SW)
    tokens_S = sample(allowed_SV, samp, request_keys(samp["seed"], positions_S))
    raw_SV = jax.nn.log_softmax(logits_SV.astype(jnp.float32), axis=-1)
    logprobs_S = jnp.take_along_axis(raw_SV, tokens_S[:, None], axis=-1)[:, 0]
    return tokens_S, logprobs_S, top_logprobs(raw_SV, proc), kv


# the pools donated; on a GPU the whole step, sampling conditionals included, is one command buffer
# (infer/config/xla_flags.py)
engine_step = jax.jit(run_engine_step, static_argnames=("cfg",), donate_argnames=("kv",),
                      compiler_options=LOOP_COMPILER_OPTIONS)
