"""Tokenizers: a checkpoint's Hugging Face `tokenizer.json`, or a byte-level fallback.

    tok = load_tokenizer("path/to/checkpoint")   # tokenizer.json if present, else bytes
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


class HFTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json (the same file transformers' fast tokenizers read)."""

    kind = "tokenizer.json"

    def __init__(self, path: str, bos_id: Optional[int] = None, eos_ids: Sequence[int] = ()):
        from tokenizers import Tokenizer
        self.path = path
        self._tok = Tokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = frozenset(i for i, t in added.items() if t.special)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)


def _special_token_id(tok: HFTokenizer, tok_cfg: dict, key: str) -> Optional[int]:
    t = tok_cfg.get(key)
    if isinstance(t, dict):
        t = t.get("content")
    return tok.token_to_id(t) if isinstance(t, str) else None


def load_tokenizer(path: str, vocab_size: Optional[int] = None):
    """The tokenizer of checkpoint directory `path`: its tokenizer.json, or ByteTokenizer when there is none.

    vocab_size (the model's): refuse a tokenizer that can produce ids the model has no embedding for.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory")
    model_cfg = _read_json(os.path.join(path, "config.json"))
    gen_cfg = _read_json(os.path.join(path, "generation_config.json"))
    tok_cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    bos = gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id"))
    eos = _ids(gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id")))
    tok_file = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tok_file):
        tok = HFTokenizer(tok_file, bos_id=None if bos is None else int(bos), eos_ids=eos)
        if tok.bos_id is None:
            tok.bos_id = _special_token_id(tok, tok_cfg, "bos_token")
        if not tok.eos_ids:
            e = _special_token_id(tok, tok_cfg, "eos_token")
            tok.eos_ids = () if e is None else (e,)
        n = tok.vocab_size
    else:
        tok = ByteTokenizer(bos_id=None if bos is None else int(bos), eos_ids=eos)
        n = 256
    if vocab_size is not None and n > vocab_size:
        raise ValueError(f"{tok_file if tok.kind != 'bytes' else path}: the {tok.kind} tokenizer has {n} ids but "
                         f"the model's vocab_size is {vocab_size}")
    return tok
