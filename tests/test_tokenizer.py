"""Tokenizer loading: tokenizer.json behaves as transformers' fast tokenizer; the byte-level fallback round-trips."""
import json
import os

import pytest

import tokenizer_fixtures as tf
from infer.io.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

TEXTS = ["hello world", "Grüße aus Köln 世界 🙂🚀 👍🏽!", "  leading and trailing  ", "", "the end.\nnew line",
         "Grüße 世界 🙂 the end.\n" * 800]  # the last one is long: encoded without holding the GIL (LONG_TEXT)


@pytest.fixture(scope="module", params=sorted(tf.MAKERS))
def tok_dir(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp(request.param))
    tf.MAKERS[request.param](d)
    return d


def test_matches_transformers_fast_tokenizer(tok_dir):
    from transformers import PreTrainedTokenizerFast
    ref = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
    ours = load_tokenizer(tok_dir)
    assert isinstance(ours, HFTokenizer)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


def test_round_trip_and_bos(tok_dir):
    tok = load_tokenizer(tok_dir)
    for text in tf.CORPUS[:5]:
        ids = tok.encode(text)
        assert ids[0] == 1  # the tokenizer.json's post-processor adds <s>
        assert tok.decode(ids) == text
        assert max(ids) < tok.vocab_size


def _write(d, name, obj):
    with open(os.path.join(d, name), "w") as f:
        json.dump(obj, f)


def test_bos_eos_from_generation_config_then_config_then_tokenizer_config(tmp_path):
    d = str(tmp_path)
    tf.byte_level_bpe(d)
    _write(d, "tokenizer_config.json", {"bos_token": "<s>", "eos_token": {"content": "</s>"}})
    tok = load_tokenizer(d)
    assert (tok.bos_id, tok.eos_ids) == (1, (2,))
    _write(d, "config.json", {"bos_token_id": 1, "eos_token_id": 0})
    assert load_tokenizer(d).eos_ids == (0,)
    _write(d, "generation_config.json", {"eos_token_id": [2, 0]})  # Llama 3 instruct lists several
    assert load_tokenizer(d).eos_ids == (2, 0)


def test_byte_fallback_when_no_tokenizer_json(tmp_path):
    _write(str(tmp_path), "config.json", {"bos_token_id": 1, "eos_token_id": 2})
    tok = load_tokenizer(str(tmp_path), vocab_size=256)
    assert isinstance(tok, ByteTokenizer) and tok.eos_ids == (2,)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.encode("a", add_special_tokens=True) == [1, 97]


def test_tokenizer_larger_than_model_vocab_is_refused(tok_dir, tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.json: the tokenizer.json tokenizer has \d+ ids but the "
                                         r"model's vocab_size is 128"):
        load_tokenizer(tok_dir, vocab_size=128)
    with pytest.raises(ValueError, match="bytes tokenizer has 256 ids but the model's vocab_size is 128"):
        load_tokenizer(str(tmp_path), vocab_size=128)
