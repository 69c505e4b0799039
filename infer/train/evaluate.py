"""Validation loss, bits per byte, and the byte-unigram baseline on the same split.

    python -m infer.train.evaluate --model models/target            # whole validation split
    python -m infer.train.evaluate --model models/target --slice    # the fixed slice shipped in models/

Bits per byte = total next-token NLL in bits / UTF-8 bytes of the predicted
tokens' text (each byte-level BPE token is an exact byte string; the EOS
separator between files counts 0 bytes but its NLL is included, which only
makes the number worse). Windows are non-overlapping, seq_len+1 tokens, so the
first token of each window is context only and is not counted.

Byte-unigram baseline: the byte frequency distribution estimated on the train
split (add-one smoothing over 256 values), evaluated as cross-entropy in bits
on the validation split's bytes.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

from infer.io.byte_alphabet import byte_to_unicode
from infer.model.heldout_loss import eval_loss, sequential_windows
from infer.train import corpus, data
from infer.train.shipped import MODELS_DIR, TOKENIZER_PATH, load_model, load_tokenizer, report_json

VAL_SLICE_PATH = os.path.join(MODELS_DIR, "val_slice.txt")
SEQ_LEN = 256


def token_byte_lengths(tok) -> np.ndarray:
    """[V] number of UTF-8 bytes each token stands for (0 for special tokens)."""
    inv = {c: b for b, c in byte_to_unicode().items()}
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    V = tok.get_vocab_size()
    out = np.zeros(V, np.int64)
    for i in range(V):
        s = tok.id_to_token(i)
        out[i] = 0 if s in specials else sum(1 for ch in s if ch in inv)
    return out


def model_bits_per_byte(params, cfg, tok, ids: np.ndarray, max_windows=None, batch_size: int = 16) -> dict:
    windows = sequential_windows(ids, SEQ_LEN, max_windows)
    loss = eval_loss(params, cfg, windows, batch_size)  # nats per predicted token
    n_tok = windows.shape[0] * SEQ_LEN
    n_bytes = int(token_byte_lengths(tok)[windows[:, 1:]].sum())
    bits = loss * n_tok / math.log(2)
    return {"val_loss_nats_per_token": loss, "tokens": n_tok, "bytes": n_bytes, "bits_per_byte": bits / n_bytes,
            "bytes_per_token": n_bytes / n_tok}


def byte_unigram_bpb(train_texts, val_texts) -> float:
    counts = np.bincount(np.frombuffer(corpus.join(train_texts).encode(), np.uint8), minlength=256) + 1.0
    logp = np.log2(counts / counts.sum())
    val_counts = np.bincount(np.frombuffer(corpus.join(val_texts).encode(), np.uint8), minlength=256)
    return float(-(val_counts * logp).sum() / val_counts.sum())


def val_slice_ids(tok) -> np.ndarray:
    with open(VAL_SLICE_PATH, encoding="utf-8") as f:
        return np.asarray(tok.encode(f.read()).ids, np.int32)


def write_val_slice(tok, val_texts, n_windows: int = 16) -> None:
    """The fixed slice: the validation text up to n_windows full windows (checked in, interpreter-independent)."""
    text, need = "", n_windows * SEQ_LEN + 1
    for t in val_texts:
        text += t + "\n\n"
        if len(tok.encode(text).ids) >= need:
            break
    ids = tok.encode(text).ids[:need]
    with open(VAL_SLICE_PATH, "w", encoding="utf-8") as f:
        f.write(tok.decode(ids))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Validation loss and bits per byte of a shipped model.")
    ap.add_argument("--model", default="models/target")
    ap.add_argument("--slice", action="store_true", help="only the fixed slice models/val_slice.txt")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--write-slice", action="store_true", help="(re)write models/val_slice.txt from the split")
    a = ap.parse_args(argv)
    tok = load_tokenizer(TOKENIZER_PATH)
    cfg, params = load_model(a.model)
    out = {"model": a.model}
    if a.slice:
        out.update(model_bits_per_byte(params, cfg, tok, val_slice_ids(tok)))
        out["slice"] = os.path.relpath(VAL_SLICE_PATH)
    else:
        train_texts, val_texts = corpus.read_split(a.val_fraction)
        if a.write_slice:
            write_val_slice(tok, val_texts)
        _, val_ids = data.token_splits(TOKENIZER_PATH, a.val_fraction)
        out.update(model_bits_per_byte(params, cfg, tok, val_ids))
        out["byte_unigram_bits_per_byte"] = byte_unigram_bpb(train_texts, val_texts)
        out["ratio_to_unigram"] = out["bits_per_byte"] / out["byte_unigram_bits_per_byte"]
    report_json(out, a.out)


if __name__ == "__main__":
    main()
