"""Output processing: a step's new tokens onto a sample, its text (detokenized, cut at stop strings), its finish.

    append_tokens(seq, tokens, logprobs, max_model_len) -> (appended ids, released text, finish reason or None)

A step brings one token per sample, or j + 1 from a speculative verify run (infer/engine/speculation.py);
they are appended in order up to the first that finishes the sample (a stop id, max_new_tokens, the context,
or a stop string in the text, or a constrained sample's grammar that allows nothing more: its matcher consumes
each token), and the rest are dropped.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from infer.engine.request import LENGTH, STOP, Sequence


def append_tokens(seq: Sequence, tokens: List[int], logprobs: List[float],
                  max_model_len: int) -> Tuple[List[int], str, Optional[str]]:
    sp = seq.request.sampling
    reason, text, new = None, "", []
    for token, logprob in zip(tokens, logprobs):
        token = int(token)
        seq.tokens.append(token)
        seq.logprobs.append(float(logprob))
        new.append(token)
        seq.request.metrics.num_output_tokens += 1
        if token in sp.stop_token_ids:
            reason = STOP
        elif seq.matcher is not None and seq.matcher.advance(token):
            reason = STOP  # the grammar is complete: nothing but EOS could follow
        elif len(seq.output) >= sp.max_new_tokens or len(seq.tokens) >= max_model_len:
            reason = LENGTH
        if seq.detok is not None:
            piece = seq.detok.add(token) + (seq.detok.flush() if reason else "")
            out, hit = release_text(seq, piece, final=reason is not None)
            text += out
            if hit:
                reason = STOP
        if reason is not None:
            break
    return new, text, reason


def release_text(seq: Sequence, piece: str, final: bool) -> Tuple[str, bool]:
    """Text safe to emit: cut at a stop string; hold back what could still become one. -> (text, stopped)."""
    stop = seq.request.stop
    buf = seq.held + piece
    hits = [i for i in (buf.find(s) for s in stop) if i >= 0]
    if hits:
        out, seq.held = buf[:min(hits)], ""
        seq.text += out
        return out, True
    keep = 0 if final or not stop else max(len(s) for s in stop) - 1
    cut = max(0, len(buf) - keep)
    out, seq.held = buf[:cut], buf[cut:]
    seq.text += out
    return out, False
