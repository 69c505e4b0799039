"""The shipped model pair (models/target, models/draft) against its model card.

Numbers are recomputed here and compared with models/*.json, which the model
card (models/MODEL_CARD.md) quotes: the validation loss on the fixed slice
models/val_slice.txt (within 2%), bits per byte at most half the byte-unigram
baseline, greedy determinism, and speculative acceptance at k=4, temperature 0.
"""
import json
import os
import re

import jax
import numpy as np
import pytest

from infer.generation.batch import generate
from infer.config import SamplingParams
from infer.train import corpus
from infer.train.evaluate import byte_unigram_bpb, model_bits_per_byte, val_slice_ids
from infer.train.shipped import MODELS_DIR, load_model, load_tokenizer

CARD = os.path.join(MODELS_DIR, "MODEL_CARD.md")


def _json(name):
    with open(os.path.join(MODELS_DIR, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def shipped():
    tok = load_tokenizer()
    tcfg, tparams = load_model(os.path.join(MODELS_DIR, "target"))
    dcfg, dparams = load_model(os.path.join(MODELS_DIR, "draft"))
    return tok, tcfg, tparams, dcfg, dparams


def test_slice_val_loss_matches_card(shipped):
    tok, cfg, params, _, _ = shipped
    card = _json("eval_target_slice.json")
    got = model_bits_per_byte(params, cfg, tok, val_slice_ids(tok))
    assert got["tokens"] == card["tokens"] and got["bytes"] == card["bytes"]
    assert abs(got["val_loss_nats_per_token"] / card["val_loss_nats_per_token"] - 1) < 0.02, (got, card)
    with open(CARD) as f:
        text = f.read()
    assert f"{card['val_loss_nats_per_token']:.4f}" in text, "MODEL_CARD.md does not quote the slice loss"


def test_bits_per_byte_at_most_half_the_byte_unigram_baseline(shipped):
    tok, cfg, params, _, _ = shipped
    full = _json("eval_target.json")
    assert full["bits_per_byte"] <= 0.5 * full["byte_unigram_bits_per_byte"], full
    # Recompute the baseline on this interpreter's split and the model's bpb on the fixed slice.
    train, val = corpus.read_split(0.05)
    baseline = byte_unigram_bpb(train, val)
    assert 3.0 < baseline < 6.0, baseline  # bytes of source code: well above 0, below 8 bits
    got = model_bits_per_byte(params, cfg, tok, val_slice_ids(tok))
    assert got["bits_per_byte"] <= 0.5 * baseline, (got, baseline)


def test_greedy_generation_is_deterministic_across_runs(shipped, no_persistent_compilation_cache):
    tok, cfg, params, _, _ = shipped
    prompts = [tok.encode("def parse_args(argv):\n").ids, tok.encode("import sys\n").ids]
    sp = SamplingParams(temperature=0.0, max_new_tokens=24)
    first = generate(params, cfg, prompts, sp).tokens
    jax.clear_caches()  # a fresh compilation, as in a new process
    second = generate(params, cfg, prompts, sp).tokens
    assert first == second
    assert all(len(t) == 24 for t in first)


def test_speculative_acceptance_at_k4_temperature0(shipped):
    from infer.generation.speculative import speculative_generate
    from infer.train.measure_speculative import acceptance, slice_prompts

    tok, tcfg, tparams, dcfg, dparams = shipped
    card = _json("speculative_metrics.json")
    assert card["batched"]["k"] == 4 and card["temperature"] == 0.0
    assert card["batched"]["acceptance"] >= 0.6 and card["batched"]["same_output"], card["batched"]
    b = card["batched"]
    # The card's own setting (8 prompts of 64 slice tokens, 128 new tokens, one batch), measured again.
    prompts = slice_prompts(tok, b["batch"], 64)
    sp = SamplingParams(temperature=0.0, max_new_tokens=b["max_new_tokens"])
    spec = speculative_generate(tparams, tcfg, dparams, dcfg, prompts, sp, k=4)
    plain = generate(tparams, tcfg, prompts, sp)
    assert spec.tokens == plain.tokens  # exact at temperature 0
    assert acceptance(spec) >= 0.6, spec.accept_hist
    assert abs(acceptance(spec) - b["acceptance"]) < 0.02, (spec.accept_hist, b["accept_hist"])
