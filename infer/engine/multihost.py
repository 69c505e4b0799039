"""One engine across several processes: process 0 schedules, every process runs the same device step.

In a multi-process JAX runtime (infer/parallel/distributed.py) every process must issue the same jitted
calls with the same inputs. The host side of the engine (requests, block manager, scheduler) lives on
process 0 only; each step it broadcasts the step's inputs (token ids, AttentionMetadata, page copies,
sampling rows, settings and token bitmask) and all processes run `engine_step` on them together, so a model sharded
over several hosts serves as one engine.

    engine = Engine(params, cfg, mesh=make_mesh(tp), ...)        # on every process, same arguments
    if jax.process_index() == 0:
        ... engine.add_request(...); engine.step() ...           # the leader, as on one host
        stop_followers(engine)
    else:
        follow(engine)                                           # returns when the leader stops

Each broadcast is a fixed-size header (the step's bucketed shapes and static fields) followed by the
arrays, whose shapes the header fixes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from infer.kv.metadata import AttentionMetadata

_HEADER = 13  # kind, T, R, M, O, S, C, poison (0/1), max_q_len, prefill_rows (-1: None), page_size (-1: None), P,
#              rows_in_order (0/1): every static field of the metadata, so all processes trace one program
_STEP, _STOP = 0, 1
_SAMP = (("temperature", np.float32), ("top_k", np.int32), ("top_p", np.float32), ("min_p", np.float32),
         ("seed", np.uint32))


def _broadcast(tree):
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(tree)


class StepChannel:
    """Process 0 sends each step's inputs; the others receive them (same order of calls on every process)."""

    def __init__(self, num_pages: int, mask_words: int):
        self.num_pages, self.mask_words = num_pages, mask_words  # W: the token bitmask's words per row

    def send(self, tokens_T, meta: AttentionMetadata, src, dst, rows, pos, samp, poison) -> None:
        T, (R, M), O, S = tokens_T.shape[0], meta.page_table_RM.shape, meta.logits_indices_O.shape[0], rows.shape[0]
        header = np.array([_STEP, T, R, M, O, S, src.shape[0], poison is not None, meta.max_q_len,
                           -1 if meta.prefill_rows is None else meta.prefill_rows,
                           -1 if meta.page_size is None else meta.page_size, self.num_pages, meta.rows_in_order],
                          np.int32)
        _broadcast(header)
        _broadcast(self._payload(tokens_T, meta, src, dst, rows, pos, samp, poison))

    def stop(self) -> None:
        _broadcast(np.array([_STOP] + [0] * (_HEADER - 1), np.int32))

    @staticmethod
    def _payload(tokens_T, meta, src, dst, rows, pos, samp, poison):
        """The arrays in a fixed order and fixed dtypes (both sides must build identical collectives)."""
        arrays = [np.asarray(a, np.int32) for a in (tokens_T, meta.positions_T, meta.slot_T, meta.query_start_R,
                                                    meta.query_len_R, meta.kv_len_R, meta.page_table_RM,
                                                    meta.logits_indices_O, src, dst, rows, pos)]
        arrays += [np.asarray(samp[k], dt) for k, dt in _SAMP]
        arrays.append(np.asarray(samp["token_bitmask"], np.int32))
        if poison is not None:
            arrays.append(np.asarray(poison, np.int32))
        return arrays

    def recv(self) -> Optional[tuple]:
        """The next step's inputs, or None when the leader stopped."""
        h = np.asarray(_broadcast(np.zeros((_HEADER,), np.int32)))
        if h[0] == _STOP:
            return None
        _, T, R, M, O, S, C, has_poison, max_q_len, prefill_rows, page_size, P, in_order = (int(x) for x in h)
        i32 = lambda *shape: np.zeros(shape, np.int32)
        like = [i32(T), i32(T), i32(T), i32(R), i32(R), i32(R), i32(R, M), i32(O), i32(C), i32(C), i32(S), i32(S)]
        like += [np.zeros((S,), dt) for _, dt in _SAMP]
        like.append(np.zeros((S, self.mask_words), np.int32))
        if has_poison:
            like.append(np.zeros((P,), np.int32))
        got = [np.asarray(a) for a in _broadcast(like)]
        tokens_T = got[0]
        meta = AttentionMetadata(*got[1:8], max_q_len=max_q_len,
                                 page_size=None if page_size < 0 else page_size,
                                 prefill_rows=None if prefill_rows < 0 else prefill_rows,
                                 rows_in_order=bool(in_order))
        src, dst, rows, pos = got[8:12]
        samp = {k: got[12 + i] for i, (k, _) in enumerate(_SAMP)}
        samp["token_bitmask"] = got[12 + len(_SAMP)]
        poison = got[13 + len(_SAMP)].astype(bool) if has_poison else None
        return tokens_T, meta, src, dst, rows, pos, samp, poison


def follow(engine) -> int:
    """On a process other than 0: run every step the leader broadcasts until it stops; returns the step count."""
    n = 0
    while True:
        inputs = engine.channel.recv()
        if inputs is None:
            return n
        engine.device_call(*inputs)
        n += 1


def stop_followers(engine) -> None:
    """On process 0: tell the followers the engine is done."""
    engine.channel.stop()
