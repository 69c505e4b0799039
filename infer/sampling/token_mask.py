"""Token bitmasks on the device: structured outputs' allowed tokens applied to a step's logits.

    logits_SV = apply_token_bitmask(logits_SV, bitmask_SW)   # -inf where a row's bit is 0

bitmask_SW: [S, W] int32, W = ceil(V / 32); bit t % 32 (least significant first) of word t // 32 allows token t
(llguidance's layout, filled on the host by infer/sampling/grammar.py). An unconstrained row is all ones (-1), and
a step with no constrained row skips the unpacking with a lax.cond. A row whose bits allow no token of [0, V) is
left as it is (a guard: the host never sends one), so no row is ever all -inf.

A step with no constrained row sends `all_allowed(S, W)`, one device array kept per shape (no host allocation or
transfer per step); a step with some sends its filled numpy mask as a jax.Array too (one argument type, one
compiled program).
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

_ALL_ALLOWED: Dict[Tuple[int, int], jax.Array] = {}


def all_allowed(S: int, W: int) -> jax.Array:
    """The [S, W] all-ones bitmask on the device (every token allowed in every row), made once per shape."""
    if (S, W) not in _ALL_ALLOWED:
        _ALL_ALLOWED[(S, W)] = jnp.full((S, W), -1, jnp.int32)
    return _ALL_ALLOWED[(S, W)]


def unpack_token_bitmask(bitmask_SW, vocab_size: int):
    """[S, V] bool: token t of row s is allowed."""
    S, W = bitmask_SW.shape
    if W * 32 < vocab_size:
        raise ValueError(f"a bitmask of {W} words holds {W * 32} tokens, fewer than V = {vocab_size}")
    shifts_32 = jnp.arange(32, dtype=jnp.int32)
    bits_SW32 = (bitmask_SW[:, :, None] >> shifts_32[None, None, :]) & 1  # arithmetic shift: bit 31 reads right
    return bits_SW32.reshape(S, W * 32)[:, :vocab_size] != 0


def apply_token_bitmask(logits_SV, bitmask_SW):
    """Logits with -inf at the tokens a row's bitmask leaves out (the step skips it when every row is all ones)."""
    V = logits_SV.shape[-1]

    def masked():
        allowed_SV = unpack_token_bitmask(bitmask_SW, V)
        allowed_SV |= ~jnp.any(allowed_SV, axis=-1, keepdims=True)
        return jnp.where(allowed_SV, logits_SV, jnp.asarray(-jnp.inf, logits_SV.dtype))

    return jax.lax.cond(jnp.any(bitmask_SW != -1), masked, lambda: logits_SV)
