"""The model's step functions: forward (no cache), prefill, decode_step, extend.

All are pure: parameters and the KV cache go in, logits and the new cache come
out. The cached steps are jitted with the cache donated, so XLA updates it in
place. `extend` is the one cached code path: prefill is extend over a
right-padded prompt, decode_step is extend by one token, and a speculative
verify pass is extend by k+1 tokens.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from infer.cache import cache_max_len
from infer.config import ModelConfig
from layers.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params, cfg: ModelConfig, tokens_BT):
    """Full causal pass over tokens [B, T] with no cache; logits [B, T, V] in float32."""
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    logits, _ = Decoder(cfg).apply({"params": params}, tokens_BT, positions_BT)
    return logits


def _extend(params, cfg: ModelConfig, tokens_BT, n_new_B, cache, logits_index_B=None):
    """Append n_new_B[b] tokens of tokens_BT[b] at each row's own position (cache["lengths"][b])."""
    B, T = tokens_BT.shape
    S = cache_max_len(cache)
    start_B = cache["lengths"]
    t_T = jnp.arange(T, dtype=jnp.int32)
    positions_BT = start_B[:, None] + t_T[None, :]
    valid_BT = t_T[None, :] < n_new_B[:, None]
    write_pos_BT = jnp.where(valid_BT, positions_BT, S)  # padding goes out of bounds and is dropped
    kv_len_B = jnp.minimum(start_B + n_new_B, S)
    kv = {name: x for name, x in cache.items() if name != "lengths"}
    logits, kv = Decoder(cfg).apply({"params": params}, tokens_BT, positions_BT, kv, kv_len_B, write_pos_BT,
                                    logits_index_B)
    kv["lengths"] = kv_len_B
    return logits, kv


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def extend(params, cfg: ModelConfig, tokens_BT, n_new_B, cache):
    """Append up to T tokens per row; logits at every position [B, T, V] (speculative verify)."""
    return _extend(params, cfg, tokens_BT, n_new_B.astype(jnp.int32), cache)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def _prefill(params, cfg, tokens_BT, lengths_B, cache):
    lengths_B = lengths_B.astype(jnp.int32)
    return _extend(params, cfg, tokens_BT, lengths_B, cache, logits_index_B=jnp.maximum(lengths_B - 1, 0))


def _check_host_ids(tokens, cfg: ModelConfig) -> None:
    """Token ids given as host data (numpy or lists) must be in [0, V): an embedding lookup would not say so.

    Device arrays are not inspected (that would force a device-to-host sync per step).
    """
    if isinstance(tokens, (np.ndarray, list)):
        tok = np.asarray(tokens)
        if tok.size and (tok.min() < 0 or tok.max() >= cfg.vocab_size):
            raise ValueError(f"tokens: ids must be in [0, {cfg.vocab_size}), got range [{tok.min()}, {tok.max()}]")


def prefill(params, cfg: ModelConfig, tokens_BT, lengths_B, cache):
    """Process right-padded prompts tokens [B, T] with real lengths [B], starting at each row's cache length.

    Returns (logits at each row's last real token [B, V], cache). A row with
    length 0 is left untouched and its logits are meaningless.
    """
    B, T = np.shape(tokens_BT)
    S = cache_max_len(cache)
    if cache["lengths"].shape != (B,):
        raise ValueError(f"tokens: batch {B} does not match the cache's batch {cache['lengths'].shape[0]}")
    if T > S:
        raise ValueError(f"tokens: prompt length {T} is longer than the cache ({S} positions)")
    _check_host_ids(tokens_BT, cfg)
    if isinstance(lengths_B, (np.ndarray, list)):
        ln = np.asarray(lengths_B)
        if ln.min() < 0 or ln.max() > T:
            raise ValueError(f"lengths: must be in [0, {T}], got {ln.tolist()}")
    return _prefill(params, cfg, jnp.asarray(tokens_BT, jnp.int32), jnp.asarray(lengths_B, jnp.int32), cache)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def _decode_step(params, cfg, tokens_B, cache):
    logits, cache = _extend(params, cfg, tokens_B[:, None], jnp.ones_like(tokens_B), cache)
    return logits[:, 0], cache


def decode_step(params, cfg: ModelConfig, tokens_B, cache):
    """One token per row [B], written at that row's own position; returns (logits [B, V], cache)."""
    if np.shape(tokens_B) != cache["lengths"].shape:
        raise ValueError(f"tokens: expected one token per cache row, shape {cache['lengths'].shape}, "
                         f"got {np.shape(tokens_B)}")
    _check_host_ids(tokens_B, cfg)
    return _decode_step(params, cfg, jnp.asarray(tokens_B, jnp.int32), cache)
