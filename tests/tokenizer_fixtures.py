"""Small tokenizer.json files of the two families real checkpoints ship.

- byte-level BPE (GPT-2 / Llama 3 / Qwen): trained here on a tiny multilingual corpus;
  multi-byte characters are split across byte tokens.
- SentencePiece-style (Llama 2 / Mistral): Metaspace "▁" words, <0xXX> byte fallback for
  characters outside the vocabulary, and a decoder that strips the leading space of a
  string, so a token decodes differently at the start of a string than after other text.
Ids 0, 1, 2 are <unk>, <s>, </s> in both (BOS 1, EOS 2, as the test checkpoints' config).
"""
import os

CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "Grüße aus Köln! Ça va très bien, merci.",
    "日本語のテキストと中文文本，还有表情符号 🙂🚀👍🏽.",
    "Ελληνικά και русский текст, עברית, العربية.",
    "The quick brown fox jumps over the lazy dog. 1234567890",
] * 4
SPECIALS = ["<unk>", "<s>", "</s>"]


def byte_level_bpe(path: str, vocab_size: int = 320) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    os.makedirs(path, exist_ok=True)
    out = os.path.join(path, "tokenizer.json")
    tok.save(out)
    return out


def sentencepiece_style(path: str) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzHTW,.!?0123456789ü":
        vocab.setdefault(ch, len(vocab))
    for piece in ["▁t", "▁th", "▁the", "he", "ll", "llo", "▁he", "▁hello", "▁w", "▁wo", "or", "orl", "▁world"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("h", "e"), ("l", "l"), ("ll", "o"), ("▁", "he"),
              ("▁he", "llo"), ("▁", "w"), ("▁w", "o"), ("o", "r"), ("or", "l"), ("▁wo", "rl")]
    merges = [m for m in merges if "".join(m) in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    os.makedirs(path, exist_ok=True)
    out = os.path.join(path, "tokenizer.json")
    tok.save(out)
    return out


MAKERS = {"byte_level_bpe": byte_level_bpe, "sentencepiece_style": sentencepiece_style}
