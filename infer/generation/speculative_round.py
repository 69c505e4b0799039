"""The parts of a speculative round every proposer shares (draft model, prompt lookup).

A round: the proposer offers k tokens x_0..x_{k-1} per row; `verify_probs` runs the target
once over [last, x_0..x_{k-1}] and returns its filtered distributions; the exact acceptance
rule accepts j of them and draws one more token y; `record_round` emits x_0..x_{j-1}, y,
truncated after the row's first stop token and at its max_new_tokens (done rows emit nothing);
the caller rolls its caches back by moving lengths. The result type with its metrics, the
input checks and the host-side result are shared too.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, as_per_request, batch_arrays
from infer.generation.batch import GenerateResult, bucket_shapes, pack_prompts, validate_prompts
from infer.model.rows import extend_rows
from infer.sampling import probs


@dataclasses.dataclass
class SpeculativeResult(GenerateResult):
    """GenerateResult plus the acceptance statistics defined in the module docstring."""

    k: int = 0
    rounds: int = 0  # iterations of the device loop (verify passes over the whole batch)
    accept_hist: List[int] = dataclasses.field(default_factory=list)  # [k+1] row-rounds by drafts accepted
    verify_tokens: int = 0  # tokens emitted by verify passes (num_generated minus each row's first token)

    @property
    def target_passes(self) -> int:
        return int(sum(self.accept_hist))

    @property
    def acceptance_rate_by_position(self) -> List[float]:
        h, tot = np.asarray(self.accept_hist, np.float64), max(1, self.target_passes)
        return [float(h[i + 1:].sum() / tot) for i in range(self.k)]

    @property
    def conditional_acceptance_by_position(self) -> List[float]:
        h = np.asarray(self.accept_hist, np.float64)
        return [float(h[i + 1:].sum() / h[i:].sum()) if h[i:].sum() else float("nan") for i in range(self.k)]

    @property
    def mean_accepted(self) -> float:
        h = np.asarray(self.accept_hist, np.float64)
        return float((h * np.arange(len(h))).sum() / h.sum()) if h.sum() else float("nan")

    @property
    def tokens_per_target_pass(self) -> float:
        return self.verify_tokens / self.target_passes if self.target_passes else float("nan")

    def metrics(self) -> dict:
        m = super().metrics()
        m.update(k=self.k, rounds=self.rounds, target_passes=self.target_passes, accept_hist=list(self.accept_hist),
                 mean_accepted=self.mean_accepted, tokens_per_target_pass=self.tokens_per_target_pass,
                 acceptance_rate_by_position=self.acceptance_rate_by_position,
                 conditional_acceptance_by_position=self.conditional_acceptance_by_position)
        return m


def validate_round(cfg: ModelConfig, prompts, max_new, k, proposals: str = "proposed tokens") -> None:
    """k (the number of `proposals` per round) must be an int >= 1, and every prompt must fit with its
    max_new_tokens plus k verify positions."""
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k: number of {proposals} per round must be an int >= 1, got {k!r}")
    validate_prompts(cfg, prompts, max_new)
    for i, p in enumerate(prompts):
        if len(p) + max_new[i] + k > cfg.max_seq_len:
            raise ValueError(f"prompts[{i}]: prompt length {len(p)} + max_new_tokens {max_new[i]} + k {k} "
                             f"(verify positions) exceeds max_seq_len={cfg.max_seq_len} of {cfg.name or 'a model'}; "
                             f"shorten the prompt, max_new_tokens or k")


@dataclasses.dataclass(frozen=True)
class RoundBatch:
    """The host-side inputs of a speculative loop: the bucketed batch (B rows of T prompt tokens, max_out outputs,
    S reserved positions per row), the packed prompts and the per-row sampling arrays."""

    k: int
    n_real: int
    max_out: int
    S: int
    tokens: np.ndarray  # [B, T]
    lengths: np.ndarray  # [B]
    active: np.ndarray  # [B]
    samp: dict


def pack_round_batch(cfgs: Sequence[ModelConfig], prompts, sampling, k, proposals: str = "draft tokens") -> RoundBatch:
    """Check the prompts against every model of the loop (`validate_round`) and pack them as every proposer does."""
    per = as_per_request(sampling, len(prompts))
    max_new = [p.max_new_tokens for p in per]
    for cfg in cfgs:
        validate_round(cfg, prompts, max_new, k, proposals=proposals)
    k = int(k)
    cap = min(cfg.max_seq_len for cfg in cfgs)
    B, T, max_out, S = bucket_shapes(len(prompts), max(len(p) for p in prompts), max(max_new), cap, extra=k)
    tokens, lengths, active = pack_prompts(prompts, B, T)
    return RoundBatch(k, len(prompts), max_out, S, tokens, lengths, active, batch_arrays(per, B))


def verify_probs(params, cfg: ModelConfig, last_B, drafts_BK, live_B, cache, samp, hidden=False):
    """One target pass over [last, x_0..x_{k-1}] per live row: filtered distributions q [B, k+1, V] and the cache
    (hidden: also the target's final features [B, k+1, D] there, as (q, features, cache))."""
    B, k = drafts_BK.shape
    verify_BK1 = jnp.concatenate([last_B[:, None], drafts_BK], axis=1)
    out = extend_rows(params, cfg, verify_BK1, live_B.astype(jnp.int32) * (k + 1), cache, logits="all",
                      hidden=hidden)
    logits_BK1V, feats_BK1D, cache = out if hidden else (out[0], None, out[1])
    samp_rep = {name: jnp.repeat(v, k + 1, axis=0) for name, v in samp.items()}  # row-major [B*(k+1)]
    q_BK1V = probs(logits_BK1V.reshape(B * (k + 1), -1), samp_rep).reshape(B, k + 1, -1)
    return (q_BK1V, feats_BK1D, cache) if hidden else (q_BK1V, cache)


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


def record_round(out_BO, n_B, hist_K1, drafts_BK, j_B, y_B, live_B, samp):
    """Write a round's emitted tokens after each row's n so far; returns (out, n, hist, tokens, keep, stopped)."""
    B, max_out = out_BO.shape
    k = drafts_BK.shape[1]
    e_BK1, keep_BK1, c_B, stopped_B = emit_round(drafts_BK, j_B, y_B, live_B, n_B, samp["max_new_tokens"],
                                                 samp["stop_ids"])
    idx_K1 = jnp.arange(k + 1, dtype=jnp.int32)
    out_BO = out_BO.at[jnp.arange(B)[:, None], jnp.where(keep_BK1, n_B[:, None] + idx_K1[None, :], max_out)].set(
        e_BK1, mode="drop")
    hist_K1 = hist_K1 + jnp.sum(jax.nn.one_hot(j_B, k + 1, dtype=jnp.int32) * live_B[:, None], axis=0)
    return out_BO, n_B + c_B, hist_K1, e_BK1, keep_BK1, stopped_B


def speculative_result(out_BO, n_B, n_real: int, rounds, hist_K1, k: int, t0: float, t1: float, t2: float):
    """The host-side result of a speculative run (the device loop finished before t2)."""
    out, n = np.asarray(out_BO), np.asarray(n_B)[:n_real]
    return SpeculativeResult(tokens=[out[i, :n[i]].tolist() for i in range(n_real)], ttft_s=t1 - t0,
                             decode_s=t2 - t1, decode_steps=int(max(n.max() - 1, 0)), num_generated=int(n.sum()),
                             k=k, rounds=int(rounds), accept_hist=np.asarray(hist_K1).tolist(),
                             verify_tokens=int(n.sum() - n_real))
