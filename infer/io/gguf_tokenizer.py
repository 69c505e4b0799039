"""The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, as a `tokenizers.Tokenizer`.

    data = read_gguf_tokenizer("model.gguf")        # .tokenizer (tokenizers.Tokenizer), .bos_id, .eos_ids, .chat_template
    tok = infer.io.tokenizer.load_gguf_tokenizer("model.gguf")  # the same as an HFTokenizer (kind "gguf")
    ids = tok.encode("Hello")                       # BOS only if tokenizer.ggml.add_bos_token says so

A GGUF carries no tokenizer.json: the vocabulary, merges, token types and
special-token ids are metadata under llama.cpp's key names. This builds the
same tokenizer transformers builds from them (`transformers.integrations.gguf`,
`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), piece by piece:

- model "gpt2" (byte-level BPE): BPE over the vocabulary, every token spelled
  in the byte-to-unicode alphabet (a token that is not gets re-spelled from its
  UTF-8 bytes), the file's merges, no unknown token;
- pre-tokenizer: byte-level with GPT-2's split regex, or, for the pre-tokenizer
  kinds whose merges were learned on another split (`tokenizer.ggml.pre`, e.g.
  "llama-bpe", "qwen2"), that split followed by byte-level without a regex;
- added tokens: CONTROL tokens (type 3) as special tokens, USER_DEFINED (type 4)
  as plain added tokens, so both match whole;
- post-processor: BOS / EOS added only as `tokenizer.ggml.add_bos_token` /
  `add_eos_token` say (default off for "gpt2" vocabularies).

Other tokenizer models (SentencePiece "llama", "t5", ...) are refused by name.
"""
import dataclasses
from typing import Optional, Tuple

from infer.io.byte_alphabet import byte_to_unicode
from infer.io.chat_template import ChatTemplate, gguf_chat_template
from infer.io.gguf_loader import GGUFError, metadata_value, open_gguf

SUPPORTED_TOKENIZER_MODELS = ("gpt2",)
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

# Split regexes of pre-tokenizer kinds that are not GPT-2's (as transformers' GGUF_PRE_TOKENIZER_SPLITS).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}


def build_gguf_tokenizer(reader):
    """A `tokenizers.Tokenizer` from an open GGUF reader's tokenizer metadata (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    path = reader.data.filename
    model = metadata_value(reader, "tokenizer.ggml.model")
    if model not in SUPPORTED_TOKENIZER_MODELS:
        raise GGUFError(f"{path}: tokenizer.ggml.model {model!r} is not supported; supported: "
                        f"{list(SUPPORTED_TOKENIZER_MODELS)} (byte-level BPE)")
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    types = metadata_value(reader, "tokenizer.ggml.token_type", [])
    merges = [tuple(m.split(" ")) for m in metadata_value(reader, "tokenizer.ggml.merges")]
    spelling = byte_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, t in enumerate(tokens):
        vocab[t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))] = i
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(metadata_value(reader, "tokenizer.ggml.pre", None))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: adding it would grow the vocabulary.
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types)
                            if ty == CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types)
                    if ty == USER_DEFINED and t in vocab])

    single, pair, specials = "$A:0", "$B:1", []
    for key, where in (("bos", "before"), ("eos", "after")):
        tid = metadata_value(reader, f"tokenizer.ggml.{key}_token_id", None)
        if tid is None or not metadata_value(reader, f"tokenizer.ggml.add_{key}_token", False):
            continue
        t = tokens[tid]
        specials.append((t, int(tid)))
        if where == "before":
            single, pair = f"{t}:0 {single}", f"{t}:1 {pair}"
        else:
            single, pair = f"{single} {t}:0", f"{pair} {t}:1"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} {pair}",
                                                       special_tokens=specials)
    return tok


def _token_id(reader, key: str) -> Optional[int]:
    v = metadata_value(reader, f"tokenizer.ggml.{key}", None)
    return None if v is None else int(v)


def end_of_turn_ids(reader) -> tuple:
    """The ids that end a generated turn: EOS, plus the end-of-turn / end-of-message tokens the file names."""
    ids = [_token_id(reader, k) for k in ("eos_token_id", "eot_token_id", "eom_token_id")]
    return tuple(dict.fromkeys(i for i in ids if i is not None))


@dataclasses.dataclass(frozen=True)
class GGUFTokenizerData:
    """Everything a GGUF file says about its tokenizer (infer.io.tokenizer.load_gguf_tokenizer wraps it)."""

    path: str
    tokenizer: object  # tokenizers.Tokenizer
    bos_id: Optional[int]
    eos_ids: Tuple[int, ...]  # EOS + end-of-turn / end-of-message
    chat_template: Optional[ChatTemplate]


def read_gguf_tokenizer(path: str) -> GGUFTokenizerData:
    """The tokenizer, BOS / EOS ids and chat template of GGUF file `path`."""
    reader = open_gguf(path)
    return GGUFTokenizerData(path=reader.data.filename, tokenizer=build_gguf_tokenizer(reader),
                             bos_id=_token_id(reader, "bos_token_id"), eos_ids=end_of_turn_ids(reader),
                             chat_template=gguf_chat_template(reader))
