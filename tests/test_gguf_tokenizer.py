"""The GGUF tokenizer and chat template against transformers' (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`),
and how load_tokenizer finds (or refuses) a checkpoint's tokenizer.

transformers builds its tokenizer from the same metadata independently (integrations/gguf), so equal ids,
equal decoded text and a byte-identical rendered chat mean ours reads the file as transformers does.
"""
import json
import os
import shutil

import pytest

import infer
import tokenizer_fixtures as tf
from infer.cli.main import main
from infer.config import SamplingParams
from infer.io.chat_template import ChatTemplateError, load_chat_template
from infer.io.model_names import model_file
from infer.io.tokenizer import ByteTokenizer, load_tokenizer
from infer.train.shipped import MODELS_DIR, load_model, load_text_tokenizer

NAME = "smollm2-135m-instruct"
TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Grüße aus Köln — 世界, こんにちは, Ελληνικά, עברית",
    "emoji 🙂🚀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "   leading spaces\t\ttabs  \n\n\n  blank lines   \r\n trailing   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|im_end|><repo_name>",
    "I'm sure it's 3.14159, 1e-5 and 1,000,000 — isn't it?",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3? 🙂\n  Explain."}, {"role": "assistant", "content": "6", "name": None},
     {"role": "user", "content": "Thanks"}],
]


@pytest.fixture(scope="module")
def toks():
    from transformers import AutoTokenizer
    path = model_file(NAME)
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return load_tokenizer(NAME, vocab_size=49152), ref


def test_encode_decode_match_transformers(toks):
    ours, ref = toks
    assert ours.kind == "gguf" and ours.vocab_size == len(ref)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False) == text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.bos_id == ref.bos_token_id and ref.eos_token_id in ours.eos_ids


def test_streaming_detokenization_reproduces_text(toks):
    from infer.io.detokenize import StreamingDetokenizer
    ours, _ = toks
    for text in TEXTS[:4]:
        ids = ours.encode(text)
        detok = StreamingDetokenizer(ours, ids[:1])
        assert ours.decode(ids[:1]) + detok.add_many(ids[1:]) + detok.flush() == text


def test_chat_template_renders_like_transformers(toks):
    ours, ref = toks
    tmpl = load_chat_template(NAME)
    for msgs in CONVERSATIONS:
        for gen in (True, False):
            assert tmpl.render(msgs, add_generation_prompt=gen) == ref.apply_chat_template(
                msgs, add_generation_prompt=gen, tokenize=False)
        assert tmpl.encode(ours, msgs) == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                                  return_dict=False)
    assert ours.token_to_id("<|im_end|>") in tmpl.end_of_turn_ids(ours)


def test_hf_dir_template_with_bos_renders_and_encodes_like_transformers(tmp_path):
    """tokenizer_config.json template that writes BOS itself, with a BOS-adding tokenizer: BOS appears once."""
    from transformers import AutoTokenizer
    d = str(tmp_path)
    tf.byte_level_bpe(d)
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
                "{% endif %}{% if loop.index0 > 3 %}{% break %}{% endif %}\n  [{{ m['role'] | upper }}] "
                "{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}"
                "[ASSISTANT] {{ {'k': 'é<&>'} | tojson }}{% endif %}")
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}, f)
    ref = AutoTokenizer.from_pretrained(d)
    ours, tmpl = load_tokenizer(d), load_chat_template(d)
    for msgs in CONVERSATIONS:
        assert tmpl.render(msgs) == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tmpl.encode(ours, msgs)
        assert ids == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids.count(ours.bos_id) == 1
    with pytest.raises(ChatTemplateError, match="no tools"):
        tmpl.render([{"role": "tool", "content": "x"}])


def test_mismatched_vocabulary_is_refused_naming_both(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf: the gguf tokenizer has 49152 ids but "
                                         r"the model's vocab_size is 1000"):
        load_tokenizer(NAME, vocab_size=1000)
    # A parent directory's shared tokenizer.json must fit the checkpoint exactly.
    shutil.copy(os.path.join(MODELS_DIR, "tokenizer.json"), tmp_path / "tokenizer.json")
    (tmp_path / "ck").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer\.json: the tokenizer\.json in the parent directory has 4096 ids "
                                         r"but checkpoint .*ck has vocab_size 8192"):
        load_tokenizer(str(tmp_path / "ck"), vocab_size=8192)
    # Next to the checkpoint (here by a relative path), a tokenizer smaller than the model's padded vocab is fine.
    shutil.copy(tmp_path / "tokenizer.json", tmp_path / "ck" / "tokenizer.json")
    monkeypatch.chdir(tmp_path)
    assert load_tokenizer("ck", vocab_size=8192).path == os.path.join("ck", "tokenizer.json")


def test_missing_tokenizer_is_an_error_naming_the_checkpoint(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(ValueError, match=r"ck: no tokenizer found for this checkpoint .* vocab_size 4096"):
        load_tokenizer(str(tmp_path / "ck"), vocab_size=4096)
    assert isinstance(load_tokenizer(str(tmp_path / "ck"), vocab_size=256), ByteTokenizer)  # a byte-level model


def test_shipped_target_cli_uses_parent_tokenizer(capsys):
    """`generate --checkpoint models/target` reads models/tokenizer.json: real text, no control characters."""
    ck = os.path.join(MODELS_DIR, "target")
    tok = load_tokenizer(ck, vocab_size=4096)
    assert tok.path == os.path.join(MODELS_DIR, "tokenizer.json") and tok.eos_ids == load_text_tokenizer().eos_ids
    assert main(["generate", "--checkpoint", ck, "--prompt", "def f", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    cfg, params = load_model(ck)
    want = infer.generate_text(params, cfg, load_text_tokenizer(), "def f",
                               SamplingParams(temperature=0.0, max_new_tokens=12)).text
    assert out.startswith(want) and want.strip()
    assert not any(ord(c) < 32 and c not in "\n\t" for c in out)


def test_llama_bpe_split_and_add_bos_match_transformers(tmp_path):
    """The same vocabulary declared with llama.cpp's "llama-bpe" pre-tokenizer and add_bos_token: the Llama 3 split
    regex and a BOS-adding post-processor, as transformers builds them from the same file."""
    import gguf
    from transformers import AutoTokenizer
    from infer.io.gguf_loader import metadata_value, open_gguf
    src = open_gguf(model_file(NAME))
    path = str(tmp_path / "llama_bpe.gguf")
    w = gguf.GGUFWriter(path, "llama")
    for k, v in dict(block_count=1, context_length=512, embedding_length=64, feed_forward_length=128).items():
        w.add_uint32(f"llama.{k}", v)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(metadata_value(src, "tokenizer.ggml.tokens"))
    w.add_token_types(metadata_value(src, "tokenizer.ggml.token_type"))
    w.add_token_merges(metadata_value(src, "tokenizer.ggml.merges"))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="llama_bpe.gguf")
    ours = load_tokenizer(path)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"] and ids[0] == ours.bos_id == 1, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
