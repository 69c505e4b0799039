"""Text in, text out, against transformers end to end, plus the streaming CLI.

The checkpoint directory holds a tiny random Llama (save_pretrained) and a
byte-level BPE tokenizer.json; transformers reads the same directory with
AutoModelForCausalLM + PreTrainedTokenizerFast.
"""
import os

import pytest
import torch

import hf_fixtures as hf
import tokenizer_fixtures as tf
import infer
from infer.cli.main import main
from infer.config import SamplingParams
from infer.generation.text import TextStream, generate_text
from infer.io.tokenizer import load_tokenizer

PROMPT = "Grüße aus Köln, 世界 🙂 and the quick brown fox"
N_NEW = 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("textckpt"))
    tf.byte_level_bpe(path, vocab_size=320)
    model = hf.build_model("llama3_rope_gqa", seed=11, vocab_size=320)
    hf.save(model, path)
    cfg, params = infer.load_hf_checkpoint(path, dtype="float32")
    return path, model, cfg, params, load_tokenizer(path, vocab_size=cfg.vocab_size)


def _hf_greedy_text(path, model, prompt, n):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"))
    enc = tok(prompt, return_tensors="pt")
    model.generation_config.eos_token_id = None  # compare n tokens, no early stop
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=n, pad_token_id=0)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def test_stream_and_generate_text_match_transformers(ckpt):
    path, model, cfg, params, tok = ckpt
    ref_ids, ref_text = _hf_greedy_text(path, model, PROMPT, N_NEW)
    sp = SamplingParams(temperature=0.0, max_new_tokens=N_NEW)
    stream = TextStream(params, cfg, tok, PROMPT, sp)
    chunks = list(stream)
    res = generate_text(params, cfg, tok, PROMPT, sp)
    if 2 in ref_ids:  # our side stops on EOS (id 2) like a real run would; compare up to it
        ref_ids = ref_ids[:ref_ids.index(2) + 1]
        ref_text = tok.decode(ref_ids)
    assert stream.token_ids == res.token_ids == ref_ids
    assert "".join(chunks) == stream.text == res.text == ref_text
    assert stream.prompt_ids == res.prompt_ids and stream.prompt_ids[0] == 1  # BOS from tokenizer.json
    m = stream.metrics()
    assert m["num_generated"] == len(ref_ids) and m["ttft_s"] > 0 and m["decode_steps"] == len(ref_ids) - 1


def test_stream_stops_on_eos_and_hides_it(ckpt):
    path, model, cfg, params, tok = ckpt
    free = TextStream(params, cfg, tok, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=N_NEW))
    list(free)
    ids = free.token_ids
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])  # first fresh token after a few steps
    tok.eos_ids = (ids[k],)
    try:
        stopped = TextStream(params, cfg, tok, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=N_NEW))
        text = "".join(stopped)
        res = generate_text(params, cfg, tok, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=N_NEW))
    finally:
        tok.eos_ids = (2,)
    assert stopped.token_ids == ids[:k + 1] == res.token_ids
    assert text == res.text == tok.decode(ids[:k])


def test_sampled_stream_matches_on_device_generate(ckpt):
    """Same sampling rule and per-step keys as infer.generation.batch: temperature > 0 gives the same tokens."""
    _, _, cfg, params, tok = ckpt
    sp = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, max_new_tokens=16, seed=3)
    stream = TextStream(params, cfg, tok, PROMPT, sp)
    list(stream)
    assert stream.token_ids == generate_text(params, cfg, tok, PROMPT, sp).token_ids


def test_cli_streams_text_from_a_checkpoint(ckpt, capsys):
    path, _, cfg, params, tok = ckpt
    assert main(["generate", "--checkpoint", path, "--prompt", PROMPT, "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    expected = generate_text(params, cfg, tok, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=12)).text
    assert out.startswith(expected) and PROMPT not in out
    for word in ("TTFT", "latency per token", "throughput"):
        assert word in out


def test_cli_refuses_a_checkpoint_without_a_tokenizer(ckpt, tmp_path, capsys):
    """No tokenizer.json next to (or above) a checkpoint whose vocabulary is not byte-level: a clear error,
    never a silent byte-level fallback that would print control characters."""
    _, _, cfg, params, _ = ckpt
    infer.save_checkpoint(str(tmp_path / "ck"), cfg, params)
    assert main(["generate", "--checkpoint", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer found" in err and str(tmp_path / "ck") in err and f"vocab_size {cfg.vocab_size}" in err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["generate", "--prompt", "hi"]) == 2
    assert "--checkpoint and --prompt go together" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"]) == 2
    assert "config.json" in capsys.readouterr().err
