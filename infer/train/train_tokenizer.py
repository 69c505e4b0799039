"""Train a small byte-level BPE tokenizer on the corpus's train split (HF `tokenizers`).

    python -m infer.train.train_tokenizer --vocab-size 4096 --out models/tokenizer.json

Byte-level: every byte sequence is encodable, and decoding gives back the exact
text, so bits per byte can be counted on the decoded text.
"""
from __future__ import annotations

import argparse
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from infer.train import corpus

EOS = "<|endoftext|>"


def train_tokenizer(texts, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"tokenizer: trained vocab {tok.get_vocab_size()} != requested {vocab_size}")
    return tok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--out", default="models/tokenizer.json")
    a = ap.parse_args(argv)
    t0 = time.time()
    train, _ = corpus.read_split(a.val_fraction)
    tok = train_tokenizer(train, a.vocab_size)
    tok.save(a.out)
    print(f"tokenizer: vocab {tok.get_vocab_size()} -> {a.out} ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
