"""The sampling rule: one token per row from its filtered distribution, with per-request keys.

A request's randomness depends only on its own seed and on the position of the
token being drawn: `request_keys(seed_B, position_B, stream)` folds the
position into the seed's key (and a stream tag, so independent uses such as a
speculative draft's proposals and its acceptance tests never share draws). The
same request therefore samples the same tokens alone, in any row of any batch,
and whether it runs in the on-device loop or one step at a time.
"""
import jax
import jax.numpy as jnp

from infer.sampling.filters import filter_logits, greedy_tokens

# Stream tags of request_keys: which use a key is for.
TOKEN, DRAFT, ACCEPT = 0, 1, 2


def request_keys(seed_B, position_B, stream: int = TOKEN):
    """One key per row [B]: fold_in(fold_in(key(seed), stream), position); nothing about the row's neighbours."""
    def one(seed, pos):
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), pos)
    return jax.vmap(one)(seed_B.astype(jnp.uint32), position_B.astype(jnp.int32))


def sample(logits_BV, samp: dict, keys_B):
    """Draw one token per row [B] int32 from the filtered distribution (argmax at temperature 0).

    When every row is greedy the filters and the draw (a softmax and V random numbers per
    row) are skipped with a lax.cond: an all-greedy batch costs one argmax (greedy_tokens).
    """
    greedy_B = samp["temperature"] <= 0
    argmax_B = greedy_tokens(logits_BV)

    def draw():
        filtered = filter_logits(logits_BV, samp)
        drawn_B = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys_B, filtered).astype(jnp.int32)
        return jnp.where(greedy_B, argmax_B, drawn_B)

    return jax.lax.cond(jnp.all(greedy_B), lambda: argmax_B, draw)


def is_stop(tokens_B, stop_ids_BS):
    """Whether each row's token is one of that row's stop ids ([B, n] padded with -1)."""
    return jnp.any(tokens_B[:, None] == stop_ids_BS, axis=-1)
