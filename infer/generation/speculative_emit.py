"""What one speculative round emits per row, shared by every proposer (draft model, prompt lookup).

After the exact acceptance rule accepted j of the k proposals x_0..x_{k-1} and drew one more
token y, a row emits x_0..x_{j-1}, y, truncated after its first stop token and at its
max_new_tokens. Rows that are done emit nothing.
"""
import jax.numpy as jnp


def emit_round(drafts_BK, j_B, y_B, live_B, n_B, max_new_B, stop_ids_BS):
    """(tokens_BK1, keep_BK1, count_B, stopped_B) of one round.

    tokens_BK1: x_0..x_{j-1} then y (positions past j repeat y); keep_BK1: which of them are emitted
    (a prefix of count_B[b] tokens); stopped_B: the row emitted one of its stop ids.
    """
    k = drafts_BK.shape[1]
    idx_K1 = jnp.arange(k + 1, dtype=jnp.int32)
    tokens_BK1 = jnp.where(idx_K1[None, :] < j_B[:, None],
                           jnp.concatenate([drafts_BK, y_B[:, None]], axis=1), y_B[:, None])
    stop_BK1 = jnp.any(tokens_BK1[..., None] == stop_ids_BS[:, None, :], axis=-1) & (idx_K1[None, :] <= j_B[:, None])
    first_stop_B = jnp.where(jnp.any(stop_BK1, axis=1), jnp.argmax(stop_BK1, axis=1), k + 1)
    count_B = jnp.where(live_B, jnp.minimum(jnp.minimum(j_B + 1, first_stop_B + 1), max_new_B - n_B), 0)
    keep_BK1 = idx_K1[None, :] < count_B[:, None]
    return tokens_BK1, keep_BK1, count_B, jnp.any(stop_BK1 & keep_BK1, axis=1)
