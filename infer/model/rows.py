"""A static batch of rows over the paged step: `init_cache`, `prefill`, `decode_step`, `extend`.

The convenience view of the one cached path for callers that think in rows
(the generation loops, tests, the README example). Its cache is

    {"kv": page pools {"k","v": [L, P, K, Z, H]}, "page_table": [B, M] int32, "lengths": [B] int32}

where row b owns the M pages page_table[b] (reserved up front: capacity M * Z
positions per row) and lengths[b] is how many are filled. Every call builds
AttentionMetadata for the rows (`rows_metadata`) and runs the ragged step.
`extend_rows` is the unjitted body for use inside jitted loops; the public
functions are jitted with the cache donated and check host inputs first.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig
from infer.kv.metadata import rows_metadata
from infer.kv.pool import DEFAULT_PAGE_SIZE, init_pools, page_size
from infer.model.step import check_token_ids, run_step


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None,
               page_size: int = DEFAULT_PAGE_SIZE) -> dict:
    """An empty cache for `batch_size` rows of up to `max_len` positions (rounded up to whole pages)."""
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size: must be an int > 0, got {batch_size!r}")
    if not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"max_len: must be an int > 0, got {max_len!r}")
    if max_len > cfg.max_seq_len:
        raise ValueError(f"max_len: {max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
    M = -(-max_len // page_size)
    return {"kv": init_pools(cfg, batch_size * M, page_size, dtype),
            "page_table": jnp.arange(batch_size * M, dtype=jnp.int32).reshape(batch_size, M),
            "lengths": jnp.zeros((batch_size,), jnp.int32)}


def capacity(cache) -> int:
    """Positions each row has reserved: M pages of Z."""
    return cache["page_table"].shape[1] * page_size(cache["kv"])


def extend_rows(params, cfg: ModelConfig, tokens_BT, n_new_B, cache, logits="last", features_BTD=None,
                hidden=False):
    """Append n_new_B[b] tokens of tokens_BT[b] to each row (unjitted body).

    logits: "last" -> [B, V] at each row's last new token; "all" -> [B, T, V]; an index
    array [B] -> [B, V] at that token of each row. features_BTD: a feature_input model's
    per-token features. hidden: return (logits, hidden, cache), hidden = the final-norm
    output at the same positions as the logits ([B, D] or [B, T, D]), or at every token with
    hidden="all" ([B, T, D], whatever the logits).
    """
    B, T = tokens_BT.shape
    n_new_B = n_new_B.astype(jnp.int32)
    meta = rows_metadata(cache["page_table"], cache["lengths"], n_new_B, T, page_size(cache["kv"]), logits)
    feats = None if features_BTD is None else features_BTD.reshape(B * T, -1)
    out = run_step(params, cfg, tokens_BT.reshape(-1), meta, cache["kv"], feats, hidden)
    out, kv, hid = out if hidden else (*out, None)
    every_token = isinstance(logits, str) and logits == "all"
    if every_token:
        out = out.reshape(B, T, -1)
    if hid is not None and (every_token or hidden == "all"):
        hid = hid.reshape(B, T, -1)
    cache = {"kv": kv, "page_table": cache["page_table"], "lengths": cache["lengths"] + n_new_B}
    return (out, hid, cache) if hidden else (out, cache)


@functools.partial(jax.jit, static_argnames=("cfg", "logits"), donate_argnames=("cache",))
def _extend_jit(params, cfg, tokens_BT, n_new_B, cache, logits):
    return extend_rows(params, cfg, tokens_BT, n_new_B, cache, logits)


def _check_rows(cfg, tokens_BT, n_new_B, cache, what):
    B, T = np.shape(tokens_BT)
    if cache["lengths"].shape != (B,):
        raise ValueError(f"{what}: batch {B} does not match the cache's batch {cache['lengths'].shape[0]}")
    check_token_ids(tokens_BT, cfg)
    n_new = np.asarray(n_new_B)
    if n_new.min() < 0 or n_new.max() > T:
        raise ValueError(f"lengths: must be in [0, {T}], got {n_new.tolist()}")
    # One small device-to-host copy: a write past a row's reserved pages must be refused, not dropped.
    end = np.asarray(cache["lengths"]) + n_new
    cap = capacity(cache)
    if end.max() > cap:
        b = int(np.argmax(end > cap))
        raise ValueError(f"{what}: row {b} would reach {int(end[b])} positions, past its {cap} reserved "
                         f"positions; use a larger cache (max_len)")


def prefill(params, cfg: ModelConfig, tokens_BT, lengths_B, cache):
    """Process right-padded prompts tokens [B, T] with real lengths [B], from each row's cache length.

    Returns (logits at each row's last real token [B, V], cache). A row with length 0 is left
    untouched and its logits are meaningless.
    """
    _check_rows(cfg, tokens_BT, lengths_B, cache, "prefill")
    return _extend_jit(params, cfg, jnp.asarray(tokens_BT, jnp.int32), jnp.asarray(lengths_B, jnp.int32), cache,
                       "last")


def decode_step(params, cfg: ModelConfig, tokens_B, cache):
    """One token per row [B], written at that row's own position; returns (logits [B, V], cache)."""
    if np.shape(tokens_B) != cache["lengths"].shape:
        raise ValueError(f"tokens: expected one token per cache row, shape {cache['lengths'].shape}, "
                         f"got {np.shape(tokens_B)}")
    tokens_B1 = np.asarray(tokens_B)[:, None] if isinstance(tokens_B, (list, np.ndarray)) else tokens_B[:, None]
    _check_rows(cfg, tokens_B1, np.ones(np.shape(tokens_B), np.int32), cache, "decode_step")
    return _extend_jit(params, cfg, jnp.asarray(tokens_B1, jnp.int32), jnp.ones(np.shape(tokens_B), jnp.int32),
                       cache, "last")


def decode_step_hlo(params, cfg: ModelConfig, cache) -> str:
    """The optimized HLO text of `decode_step` at this cache's shapes: what the compiler will run, for inspection
    (e.g. whether a layer loop copies weight slices before its matmuls). Compiles; runs nothing."""
    B = cache["lengths"].shape[0]
    tokens_B1, ones_B = jnp.zeros((B, 1), jnp.int32), jnp.ones((B,), jnp.int32)
    return _extend_jit.lower(params, cfg, tokens_B1, ones_B, cache, "last").compile().as_text()


def extend(params, cfg: ModelConfig, tokens_BT, n_new_B, cache):
    """Append up to T tokens per row; logits at every position [B, T, V] (speculative verify)."""
    _check_rows(cfg, tokens_BT, n_new_B, cache, "extend")
    return _extend_jit(params, cfg, jnp.asarray(tokens_BT, jnp.int32), jnp.asarray(n_new_B, jnp.int32), cache,
                       "all")
