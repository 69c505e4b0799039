"""Streaming detokenization never splits a character, never repeats the prompt, and adds up to the full decode.

The reference is the tokenizer's own decode of the whole sequence: the streamed
chunks must concatenate to decode(prompt + generated) minus decode(prompt).
"""
import numpy as np
import pytest

import tokenizer_fixtures as tf
from infer.io.detokenize import StreamingDetokenizer
from infer.io.tokenizer import ByteTokenizer, HFTokenizer

PROMPT = "Grüße, the prompt ends here."  # ends on a vocabulary piece, not a byte-fallback token
OUTPUTS = ["hello world 世界 🙂🚀👍🏽 done", " the end.", "ü🙂", "Ελληνικά and русский", "  spaced  out  "]


@pytest.fixture(scope="module", params=sorted(tf.MAKERS) + ["bytes"])
def tok(request, tmp_path_factory):
    if request.param == "bytes":
        t = ByteTokenizer(eos_ids=(2,))
    else:
        t = HFTokenizer(tf.MAKERS[request.param](str(tmp_path_factory.mktemp(request.param))))
    t.fixture_name = request.param
    return t


def _stream(tok, prompt_ids, gen_ids):
    d = StreamingDetokenizer(tok, prompt_ids)
    chunks = [d.add(t) for t in gen_ids]
    chunks.append(d.flush())
    return d, chunks


def _reference(tok, prompt_ids, gen_ids):
    full, prompt = tok.decode(list(prompt_ids) + list(gen_ids)), tok.decode(prompt_ids)
    assert full.startswith(prompt)
    return full[len(prompt):]


@pytest.mark.parametrize("out", OUTPUTS)
def test_stream_adds_up_to_full_decode_without_broken_characters(tok, out):
    prompt_ids = tok.encode(PROMPT)
    gen_ids = tok.encode(out, add_special_tokens=False)
    d, chunks = _stream(tok, prompt_ids, gen_ids)
    assert "".join(chunks) == d.text == _reference(tok, prompt_ids, gen_ids)
    assert out.strip() in d.text  # the text itself, and ...
    assert PROMPT not in d.text  # ... never the prompt
    assert not any("\ufffd" in c for c in chunks)


def test_outputs_really_split_characters_across_tokens(tok):
    """The cases above are not vacuous: some token of the outputs decodes alone to half a character."""
    halves = [t for out in OUTPUTS for t in tok.encode(out, add_special_tokens=False) if "\ufffd" in tok.decode([t])]
    assert halves


def test_random_text_streams_match_full_decode(tok):
    """Random text over 1- to 4-byte characters, so characters split across tokens at random places."""
    rng = np.random.RandomState(0)
    pool = list("abc xyz.,!") + list("üßéñ") + list("世界日本語") + ["🙂", "🚀", "👍🏽"]
    prompt_ids = tok.encode(PROMPT)
    for _ in range(30):
        text = "".join(rng.choice(pool, size=rng.randint(1, 25)))
        gen_ids = tok.encode(text, add_special_tokens=False)
        d, chunks = _stream(tok, prompt_ids, gen_ids)
        assert "".join(chunks) == _reference(tok, prompt_ids, gen_ids)
        assert not any("\ufffd" in c for c in chunks)


def test_random_ids_including_invalid_bytes_match_full_decode(tok):
    """Arbitrary ids (invalid UTF-8 included): once flushed, the stream equals the full decode.

    Except, for the SentencePiece-style decoder, when the output is not valid text: its ByteFallback
    step replaces a whole run of byte tokens once the run turns out invalid, retroactively un-decoding
    a character the stream had already (correctly) emitted. There only valid outputs must match.
    """
    rng = np.random.RandomState(1)
    prompt_ids = tok.encode(PROMPT)
    checked = 0
    for _ in range(60):
        gen_ids = rng.randint(3, tok.vocab_size, size=rng.randint(1, 12)).tolist()
        d, chunks = _stream(tok, prompt_ids, gen_ids)
        ref = _reference(tok, prompt_ids, gen_ids)
        if "\ufffd" in ref and tok.fixture_name == "sentencepiece_style":
            continue
        assert "".join(chunks) == ref
        checked += 1
    assert checked >= 5


def test_incomplete_character_is_held_back_until_complete():
    tok = ByteTokenizer()
    d = StreamingDetokenizer(tok, tok.encode("> "))
    out = [d.add(b) for b in "a世🙂".encode("utf-8")]
    assert out == ["a", "", "", "世", "", "", "", "🙂"]
    assert d.add(0xE4) == "" and d.flush() == "\ufffd"  # an unfinished character at the very end


def test_special_tokens_are_skipped_and_nothing_is_emitted_twice(tmp_path):
    tok = HFTokenizer(tf.byte_level_bpe(str(tmp_path)))
    prompt_ids = tok.encode("hi")
    d = StreamingDetokenizer(tok, prompt_ids)
    gen = tok.encode(" world", add_special_tokens=False) + [2]  # </s>
    chunks = [d.add(t) for t in gen] + [d.flush()]
    assert "".join(chunks) == " world"
    assert d.generated_ids == gen
