"""Split-K ("flash decoding"): how many pieces to cut a row's keys into, and the exact merge.

With one program per (row, KV head), batch 1 of an 8-KV-head model launches 8
programs on a GPU with 132 SMs. Cutting the sequence into J splits gives
B * K * J programs; each returns its partial (acc, m, l) and `merge_splits`
combines them with a log-sum-exp rescale, which is exact up to rounding.
"""
import dataclasses

import jax.numpy as jnp

# Programs we want in flight: a few per SM so loads of one overlap math of another.
GPU_TARGET_PROGRAMS = 4 * 132
# Fewest key blocks per split: below this the merge and launch overhead dominate.
MIN_BLOCKS_PER_SPLIT = 4
# A grid of this many (row, head) programs (two per H100 SM) is not split at all: every SM already has two programs
# to overlap, and J = 1 lets the decode kernel write its normalised output itself, where J > 1 writes float32
# partials and launches the merge (Llama 3 8B at batch 64: B*K = 512 programs, one launch per layer fewer).
UNSPLIT_FROM = 2 * 132


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    block_k: int  # keys per block (T_blk)
    num_blocks: int  # blocks covering the cache's S positions
    blocks_per_split: int
    num_splits: int  # J

    @property
    def split_len(self) -> int:
        return self.blocks_per_split * self.block_k


def choose_num_splits(batch_heads: int, num_blocks: int, target_programs: int = GPU_TARGET_PROGRAMS,
                      min_blocks_per_split: int = MIN_BLOCKS_PER_SPLIT) -> int:
    """J from B*K and the number of key blocks: enough programs to fill the device, none too short; 1 from
    UNSPLIT_FROM programs on."""
    if batch_heads <= 0 or num_blocks <= 0:
        raise ValueError(f"choose_num_splits: need batch_heads > 0 and num_blocks > 0, got {batch_heads}, {num_blocks}")
    if batch_heads >= UNSPLIT_FROM:
        return 1
    want = -(-target_programs // batch_heads)
    most = max(1, num_blocks // min_blocks_per_split)
    return max(1, min(want, most))


def plan_splits(seq_len: int, block_k: int, batch_heads: int, num_splits=None, **kw) -> SplitPlan:
    """Cut seq_len positions into J splits of whole blocks (J may shrink so no split is empty by layout)."""
    num_blocks = -(-seq_len // block_k)
    J = num_splits if num_splits is not None else choose_num_splits(batch_heads, num_blocks, **kw)
    if J <= 0:
        raise ValueError(f"num_splits: must be > 0, got {J}")
    bps = -(-num_blocks // J)
    return SplitPlan(block_k=block_k, num_blocks=num_blocks, blocks_per_split=bps, num_splits=-(-num_blocks // bps))


def merge_splits(acc_XJGH, m_XJG, l_XJG):
    """Combine J partial results (axis -3 of acc, -2 of m/l) into (out, m, l).

    acc are un-normalised sums exp(logit - m_j) v; an empty split has m = -inf,
    l = 0, acc = 0. The output of a row with no visible key is 0, its m -inf.
    """
    m = jnp.max(m_XJG, axis=-2)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w_XJG = jnp.where(l_XJG > 0, jnp.exp(m_XJG - m_safe[..., None, :]), 0.0)
    l = jnp.sum(w_XJG * l_XJG, axis=-2)
    acc = jnp.sum(w_XJG[..., None] * acc_XJGH, axis=-3)
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return out, m, l
