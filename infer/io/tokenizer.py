"""Tokenizers: a checkpoint's Hugging Face `tokenizer.json`, a GGUF file's, or a byte-level fallback.

    tok = load_tokenizer("path/to/checkpoint")   # tokenizer.json beside it or one level up; bytes only for V <= 256
    tok = load_tokenizer("smollm2-135m-instruct")  # a .gguf file, a dir holding one, or a model name
    ids = tok.encode("Hello")                    # special tokens (BOS) as the tokenizer.json's post-processor says
    text = tok.decode(ids)

Both kinds share one interface: `encode`, `decode`, `vocab_size`, `bos_id`
(None if none), `eos_ids` (tuple: the ids that end generation) and
`special_ids`. EOS ids come from generation_config.json, else config.json,
else the tokenizer's own eos token, so Llama 3 chat models stop on every end
token they list.
"""
import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_EOS_TOKEN = "<|endoftext|>"  # EOS of GPT-2-style tokenizers (and the shipped one) when no config names one


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        d = json.load(f)
    return d if isinstance(d, dict) else {}


def _ids(v) -> Tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),)


class ByteTokenizer:
    """Token id = byte value (0..255). Decoding invalid UTF-8 gives U+FFFD; ids >= 256 decode to nothing."""

    kind = "bytes"
    vocab_size = 256

    def __init__(self, bos_id: Optional[int] = None, eos_ids: Sequence[int] = ()):
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.special_ids = frozenset(i for i in (bos_id, *self.eos_ids) if i is not None and i >= 256)

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """UTF-8 bytes of text; BOS first only if asked (byte ids may double as BOS/EOS in random models)."""
        ids = list(text.encode("utf-8"))
        if add_special_tokens and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


LONG_TEXT = 8192  # characters: from here HFTokenizer.encode lets other threads run while it works


class HFTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json (the same file transformers' fast tokenizers read)."""

    kind = "tokenizer.json"

    def __init__(self, path: str, bos_id: Optional[int] = None, eos_ids: Sequence[int] = (), tokenizer=None):
        """path: the tokenizer.json read, or (with `tokenizer`, an already built `tokenizers.Tokenizer`) its source."""
        from tokenizers import Tokenizer
        self.path = path
        self._tok = Tokenizer.from_file(path) if tokenizer is None else tokenizer
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = frozenset(i for i, t in added.items() if t.special)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        if len(text) >= LONG_TEXT:  # encode_batch releases the GIL (encode holds it: a 1 MB text stalls every
            # other thread, the server's event loop included, for ~0.6 s); the same ids
            return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json text (what llguidance builds its token trie from)."""
        return self._tok.to_str()


def _special_token_id(tok: HFTokenizer, tok_cfg: dict, key: str) -> Optional[int]:
    t = tok_cfg.get(key)
    if isinstance(t, dict):
        t = t.get("content")
    return tok.token_to_id(t) if isinstance(t, str) else None


def load_gguf_tokenizer(path: str) -> HFTokenizer:
    """A GGUF file's tokenizer (infer.io.gguf_tokenizer) as an HFTokenizer of kind "gguf", carrying the file's
    `chat_template` (an infer.io.chat_template.ChatTemplate, or None)."""
    from infer.io.gguf_tokenizer import read_gguf_tokenizer
    data = read_gguf_tokenizer(path)
    tok = HFTokenizer(data.path, bos_id=data.bos_id, eos_ids=data.eos_ids, tokenizer=data.tokenizer)
    tok.kind = "gguf"
    tok.chat_template = data.chat_template
    return tok


def find_tokenizer_json(path: str) -> Optional[str]:
    """tokenizer.json next to checkpoint dir `path`, else in its parent (models/target shares models/tokenizer.json)."""
    for d in (path, os.path.dirname(os.path.abspath(path))):
        f = os.path.join(d, TOKENIZER_FILE)
        if os.path.exists(f):
            return f
    return None


def load_tokenizer(path: str, vocab_size: Optional[int] = None):
    """The tokenizer of checkpoint `path`: a GGUF file's (a .gguf file, a dir holding one, or a model name in
    infer.io.model_names), else the tokenizer.json next to the checkpoint or in its parent directory.

    Without a tokenizer, ByteTokenizer only for a byte-level model (vocab_size None or <= 256); a larger
    vocabulary without a tokenizer is an error naming the checkpoint. vocab_size (the model's): refuse a
    tokenizer that can produce ids the model has no embedding for, and a parent directory's (shared)
    tokenizer.json whose size is not exactly vocab_size (it belongs to another model).
    """
    from infer.io.model_names import resolve_gguf
    gguf_path = resolve_gguf(path)
    if gguf_path is not None:
        tok = load_gguf_tokenizer(gguf_path)
        if vocab_size is not None and tok.vocab_size > vocab_size:
            raise ValueError(f"{gguf_path}: the gguf tokenizer has {tok.vocab_size} ids but the model's vocab_size "
                             f"is {vocab_size}")
        return tok
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory, .gguf file or known model name")
    model_cfg = _read_json(os.path.join(path, "config.json"))
    gen_cfg = _read_json(os.path.join(path, "generation_config.json"))
    tok_cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    bos = gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id"))
    eos = _ids(gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id")))
    tok_file = find_tokenizer_json(path)
    if tok_file is not None:
        tok = HFTokenizer(tok_file, bos_id=None if bos is None else int(bos), eos_ids=eos)
        if tok.bos_id is None:
            tok.bos_id = _special_token_id(tok, tok_cfg, "bos_token")
        if not tok.eos_ids:
            e = _special_token_id(tok, tok_cfg, "eos_token")
            if e is None:
                e = tok.token_to_id(DEFAULT_EOS_TOKEN)
            tok.eos_ids = () if e is None else (e,)
        n = tok.vocab_size
        shared = os.path.dirname(os.path.abspath(tok_file)) != os.path.abspath(path)
        if shared and vocab_size is not None and n != vocab_size:
            raise ValueError(f"{tok_file}: the tokenizer.json in the parent directory has {n} ids but checkpoint "
                             f"{path} has vocab_size {vocab_size}: it is not this checkpoint's tokenizer")
    else:
        if vocab_size is not None and vocab_size > 256:
            raise ValueError(f"{path}: no tokenizer found for this checkpoint (looked for {TOKENIZER_FILE} in it and "
                             f"in its parent directory) and its vocab_size {vocab_size} is not byte-level")
        tok = ByteTokenizer(bos_id=None if bos is None else int(bos), eos_ids=eos)
        n = 256
    if vocab_size is not None and n > vocab_size:
        raise ValueError(f"{tok_file if tok.kind != 'bytes' else path}: the {tok.kind} tokenizer has {n} ids but "
                         f"the model's vocab_size is {vocab_size} (checkpoint {path})")
    return tok
