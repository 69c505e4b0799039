"""The speculative-sampling acceptance rule (Leviathan et al. 2023; Chen et al. 2023) for one row.

The draft proposed tokens x_0..x_{k-1}, x_i drawn from p_i = draft_probs[i];
the target's distributions at the same positions are q_i = target_probs[i]
(q_k is the distribution after all k drafts: the "bonus" position).

    for i in 0..k-1:  accept x_i with probability a_i = min(1, q_i(x_i) / p_i(x_i))
    at the first rejection j:  emit a sample of r_j = normalize(max(q_j - p_j, 0))
    if all k accepted:         emit a sample of q_k (the bonus token)

so every call emits num_accepted + 1 tokens: x_0..x_{j-1} and next_token.
Each emitted token is an exact sample of the target q given the tokens before
it (tested by exact enumeration in tests/test_speculative_accept.py).

Zeros (the documented edge cases; u ~ Uniform[0, 1) and x_i is accepted iff u < a_i):
- q_i(x_i) = 0: a_i = 0, x_i is always rejected, whatever p is. A token the
  (filtered) target forbids is therefore never emitted.
- p_i(x_i) = 0 < q_i(x_i): a_i = 1 (the ratio is +inf). The draft cannot have
  drawn x_i, so this only matters when draft_tokens do not come from draft_probs.
- p_i(v) = 0 at other tokens v where q_i(v) > 0: the draft never proposes v;
  the residual max(q - p, 0) carries q's full mass there, which is how v is
  still emitted with probability q(v).
- p_i = q_i: a_i = 1 for every proposable token; never rejected.
- Residual with zero total mass (max(q_j - p_j, 0) == 0 everywhere, i.e.
  q_j <= p_j everywhere, i.e. q_j == p_j as both sum to 1): a rejection there
  has probability zero when x_j ~ p_j (it needs q_j(x_j) < p_j(x_j)); if it is
  reached anyway (x_j had p = q = 0, or rounding) we emit a sample of q_j itself.
- Temperature 0: p and q are one-hot (the argmaxes), so a_i = 1 iff x_i equals
  the target's argmax and 0 otherwise, and the residual is the target's
  one-hot: the output is exactly the target's greedy continuation.

Everything is computed in float32. The rule is split into pure pieces
(`acceptance_probs`, `emit_distribution`) so tests can integrate it exactly;
`accept` draws the randomness. Vmap it over the batch (`accept_batch`): rows
accept different counts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_shapes(draft_tokens, draft_probs, target_probs):
    (k,) = draft_tokens.shape
    if draft_probs.ndim != 2 or draft_probs.shape[0] != k:
        raise ValueError(f"draft_probs: expected [k={k}, V], got {draft_probs.shape}")
    V = draft_probs.shape[1]
    if target_probs.shape != (k + 1, V):
        raise ValueError(f"target_probs: expected [k+1={k + 1}, V={V}] (draft_probs is {draft_probs.shape}), "
                         f"got {target_probs.shape}")
    return k, V


def acceptance_probs(draft_tokens, draft_probs, target_probs):
    """a_i = min(1, q_i(x_i) / p_i(x_i)) [k] float32, with a = 0 where q = 0 and a = 1 where p = 0 < q."""
    k, _ = _check_shapes(draft_tokens, draft_probs, target_probs)
    idx = draft_tokens.astype(jnp.int32)[:, None]
    p_k = jnp.take_along_axis(draft_probs.astype(jnp.float32), idx, axis=-1)[:, 0]
    q_k = jnp.take_along_axis(target_probs[:k].astype(jnp.float32), idx, axis=-1)[:, 0]
    ratio = jnp.where(p_k > 0, q_k / jnp.where(p_k > 0, p_k, 1.0), jnp.where(q_k > 0, 1.0, 0.0))
    return jnp.clip(ratio, 0.0, 1.0)


def emit_distribution(draft_probs, target_probs, num_accepted):
    """The distribution [V] the token after `num_accepted` accepted drafts is drawn from.

    num_accepted == k: the bonus distribution target_probs[k]; otherwise the
    normalised residual max(q_j - p_j, 0) at j = num_accepted (q_j itself if
    the residual has no mass; see the module docstring).
    """
    k = draft_probs.shape[0]
    j = jnp.asarray(num_accepted, jnp.int32)
    q_V = jnp.take(target_probs.astype(jnp.float32), j, axis=0)
    p_V = jnp.take(draft_probs.astype(jnp.float32), jnp.minimum(j, k - 1), axis=0)
    resid_V = jnp.maximum(q_V - p_V, 0.0)
    mass = jnp.sum(resid_V)
    resid_V = jnp.where(mass > 0, resid_V / jnp.where(mass > 0, mass, 1.0), q_V)
    return jnp.where(j >= k, q_V, resid_V)


def num_accepted_from_uniforms(accept_probs_k, u_k):
    """Length of the accepted prefix: the first i with u_i >= a_i (k if none)."""
    k = accept_probs_k.shape[0]
    rejected = u_k >= accept_probs_k
    return jnp.where(jnp.any(rejected), jnp.argmax(rejected), k).astype(jnp.int32)


def accept(draft_tokens, draft_probs, target_probs, key):
    """One row: (num_accepted int32 in [0, k], next_token int32).

    draft_tokens [k] int, draft_probs [k, V] (the distributions the drafts were
    drawn from), target_probs [k+1, V]. The emitted tokens are
    draft_tokens[:num_accepted] followed by next_token.
    """
    k, V = _check_shapes(draft_tokens, draft_probs, target_probs)
    key_u, key_next = jax.random.split(key)
    a_k = acceptance_probs(draft_tokens, draft_probs, target_probs)
    u_k = jax.random.uniform(key_u, (k,), jnp.float32)  # [0, 1): P(u < a) = a exactly for a in {0, 1}
    j = num_accepted_from_uniforms(a_k, u_k)
    dist_V = emit_distribution(draft_probs, target_probs, j)
    nxt = jax.random.categorical(key_next, jnp.log(dist_V))  # log 0 = -inf: never drawn
    return j, nxt.astype(jnp.int32)


accept_batch = jax.vmap(accept)
"""accept over a batch: draft_tokens [B, k], draft_probs [B, k, V], target_probs [B, k+1, V], keys [B]."""
