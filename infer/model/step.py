"""The model's one cached step: a flat, ragged batch of tokens over the page pools.

    step(params, cfg, tokens_T, meta, kv) -> (logits [O, V] float32, kv)

T tokens from up to R sequences, each contributing any number of new tokens
(prefill chunks, decode tokens, speculative verify runs), described by
AttentionMetadata (infer/kv/metadata.py). Every other cached path -- prefill,
decode, verify, the on-device generation loops -- is this step with different
metadata. `step` is jitted with the pools donated (XLA updates them in place);
`run_step` is the same function unjitted, for use inside other jitted programs.
"""

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig
from infer.kv.metadata import AttentionMetadata, MetadataError
from infer.kv.pool import num_pages, page_size
from layers.decoder import Decoder


def run_step(params, cfg: ModelConfig, tokens_T, meta: AttentionMetadata, kv, features_TD=None, hidden=False):
    """The step's math (unjitted): logits [O, V] at meta.logits_indices_O and the updated pools.

    features_TD: a feature per token for a feature_input model; hidden: return (logits, kv, hidden [O, D])."""
    if meta.page_size is not None and meta.page_size != page_size(kv):  # static: checked once, at trace time
        raise MetadataError(f"page_size: the metadata was built for pages of {meta.page_size} tokens, the pools "
                            f"hold pages of {page_size(kv)}")
    if tokens_T.shape != meta.positions_T.shape:
        raise MetadataError(f"tokens_T: {tokens_T.shape[0]} tokens, but the metadata describes "
                            f"{meta.positions_T.shape[0]} (build both with build_metadata)")
    feats = None if features_TD is None else features_TD[None]
    return Decoder(cfg).apply({"params": params}, tokens_T[None], meta.positions_T[None], kv, meta, feats, hidden)


_step_jit = jax.jit(run_step, static_argnames=("cfg",), donate_argnames=("kv",))


def check_token_ids(tokens, cfg: ModelConfig, what: str = "tokens") -> None:
    """Host token ids (numpy or lists) must be in [0, V): an embedding lookup would not say so.

    Device arrays are not inspected (that would force a device-to-host sync per step).
    """
    if isinstance(tokens, (np.ndarray, list)):
        tok = np.asarray(tokens)
        if tok.size and (tok.min() < 0 or tok.max() >= cfg.vocab_size):
            bad = int(tok[(tok < 0) | (tok >= cfg.vocab_size)].flat[0])
            raise ValueError(f"{what}: token id {bad} is outside [0, vocab_size={cfg.vocab_size})")


def check_metadata(meta: AttentionMetadata, kv) -> None:
    """Host metadata must stay inside the pools: page table entries in [0, P), slots in [-1, P * Z)."""
    P, Z = num_pages(kv), page_size(kv)
    if isinstance(meta.page_table_RM, np.ndarray):
        tab = meta.page_table_RM
        if tab.size and (tab.min() < 0 or tab.max() >= P):
            r = int(np.argwhere((tab < 0) | (tab >= P))[0, 0])
            raise MetadataError(f"page_table_RM: sequence {r} names a page outside the pool [0, {P})")
    if isinstance(meta.slot_T, np.ndarray):
        sl = meta.slot_T
        if sl.size and (sl.min() < -1 or sl.max() >= P * Z):
            raise MetadataError(f"slot_T: a write slot is outside the pool [0, {P * Z}) (or -1 for padding)")


def step(params, cfg: ModelConfig, tokens_T, meta: AttentionMetadata, kv):
    """One jitted step over a flat batch (pools donated: use the returned ones).

    Host inputs are checked before the donated pools are consumed: token ids < V,
    page table entries and write slots inside the pool.
    """
    check_token_ids(tokens_T, cfg)
    check_metadata(meta, kv)
    meta = jax.tree_util.tree_map(jnp.asarray, meta)
    return _step_jit(params, cfg, jnp.asarray(tokens_T, jnp.int32), meta, kv)
