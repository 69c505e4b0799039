"""Structured outputs on the host: llguidance grammars, one matcher per sequence, and the token bitmasks.

    text = grammar_text("json_schema", '{"type": "object"}')  # llguidance's grammar; a bad spec: ValueError
    g = TokenGrammar(tokenizer, vocab_size=cfg.vocab_size)    # once per engine (~0.5 s: the token trie)
    m = g.matcher("regex", r"[0-9]{3}")                       # one per sequence (n samples: m.fork())
    g.fill([(m, 0)], mask_SW)                                 # row 0 of a [S, W] int32 bitmask, W = ceil(V / 32)
    m.advance(token)                                          # True: the grammar is complete, only EOS may follow

Kinds (infer.config.sampling_params.Constraint): "json_object" (any JSON object), "json_schema" (a JSON schema as
JSON text), "regex" (the whole output matches it), "grammar" (a Lark grammar, llguidance's dialect). JSON is
compact: no whitespace between tokens (`whitespace_flexible` off), so a small model cannot pad an object with
blank lines until it runs out of tokens.

Bit t of a row (word t // 32, bit t % 32, least significant first; llguidance's layout) allows token t. Ids at or
past the tokenizer's vocabulary (a model whose embedding table is padded) are never allowed in a constrained row:
the LLTokenizer is built with the model's V, and llguidance leaves the ids it has no bytes for off. Where the
matcher accepts (the output is complete as it stands) the row also allows the sequence's stop ids (EOS, a chat
template's end of turn, the request's own), so a grammar that may go on or end lets the model choose.

llguidance is imported on first use: importing this module costs nothing until a constraint is used.
"""
from __future__ import annotations

import functools
import json
from typing import Iterable, Sequence, Tuple

import numpy as np

KINDS = ("json_object", "json_schema", "regex", "grammar")
JSON_OPTIONS = {"whitespace_flexible": False}


def mask_words(vocab_size: int) -> int:
    """W: int32 words per bitmask row for a vocabulary of V ids."""
    return -(-vocab_size // 32)


@functools.lru_cache(maxsize=512)
def grammar_text(kind: str, spec: str) -> str:
    """The llguidance grammar of a constraint, checked (without a tokenizer); ValueError saying what is wrong."""
    import llguidance as llg
    if kind == "json_object":
        text = llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    elif kind == "json_schema":
        try:
            schema = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise ValueError(f"a JSON schema is an object (or true / false), got {type(schema).__name__}")
        try:
            text = llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # ValueError on a schema it cannot read (a Rust panic is a BaseException)
            raise ValueError(f"the JSON schema was refused: {e}") from None
    elif kind == "regex":
        text = llg.LLMatcher.grammar_from_regex(spec)
    elif kind == "grammar":
        text = llg.LLMatcher.grammar_from_lark(spec)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        is_error, messages = True, [f"{type(e).__name__}: {e}"]
    if is_error:
        raise ValueError(f"the {kind.replace('_', ' ')} was refused: {messages[0]}"[:1000])
    return text


def _llg_tokenizer(tokenizer, vocab_size: int):
    """An llguidance LLTokenizer over the model's V ids from one of infer.io.tokenizer's tokenizers."""
    import llguidance as llg
    eos = list(getattr(tokenizer, "eos_ids", ()))
    if hasattr(tokenizer, "to_json"):  # HFTokenizer: its tokenizers.Tokenizer as tokenizer.json text
        return llg.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size, eos_token=eos or None)
    if getattr(tokenizer, "kind", None) == "bytes":  # ByteTokenizer: token id = byte value

        class Bytes:
            eos_token_id = eos[0] if eos else None
            bos_token_id = getattr(tokenizer, "bos_id", None)
            tokens = [bytes([i]) for i in range(256)] + [b""] * max(0, vocab_size - 256)
            special_token_ids = sorted(getattr(tokenizer, "special_ids", ()))

            def __call__(self, s):
                return list(s if isinstance(s, bytes) else s.encode("utf-8"))
        return llg.LLTokenizer(llg.TokenizerWrapper(Bytes()), n_vocab=vocab_size, eos_token=eos or None)
    raise ValueError(f"constraints need a tokenizer.json or byte tokenizer, got {type(tokenizer).__name__}")


class Matcher:
    """One sequence's place in its grammar (an llguidance LLMatcher) and its stop ids."""

    def __init__(self, llm_matcher, stop_ids: Tuple[int, ...]):
        self.m, self.stop_ids = llm_matcher, tuple(stop_ids)

    def fork(self) -> "Matcher":
        """An independent copy at the same place (a request's n samples each get their own)."""
        return Matcher(self.m.deep_copy(), self.stop_ids)

    def advance(self, token: int) -> bool:
        """Consume a sampled token; True when the output is complete (the grammar allows nothing but EOS now).
        A token the grammar refuses (only possible if the mask was not applied) ends the output too, in the step
        that brought it, never failing the step of the others (`error` says what happened)."""
        if not self.m.consume_token(int(token)):
            return True
        return self.m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.m.is_accepting()

    @property
    def error(self) -> str:
        return self.m.get_error() if self.m.is_error() else ""


class TokenGrammar:
    """Builds matchers over one tokenizer and fills their bitmask rows (llguidance's executor: in parallel, outside
    the GIL)."""

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance as llg
        self.vocab_size, self.words = vocab_size, mask_words(vocab_size)
        self.tok = _llg_tokenizer(tokenizer, vocab_size)
        self.executor = llg.LLExecutor()

    def matcher(self, kind: str, spec: str, stop_ids: Sequence[int] = ()) -> Matcher:
        """A fresh matcher; ValueError when the grammar does not compile against this tokenizer."""
        import llguidance as llg
        m = llg.LLMatcher(self.tok, grammar_text(kind, spec))
        if m.is_error():
            raise ValueError(f"the {kind.replace('_', ' ')} was refused: {m.get_error()}"[:1000])
        return Matcher(m, tuple(int(t) for t in stop_ids if 0 <= int(t) < self.vocab_size))

    def fill(self, rows: Iterable[Tuple[Matcher, int]], mask_SW: np.ndarray) -> None:
        """Write each matcher's allowed tokens into its row of mask_SW ([S, W] int32, C-contiguous); the other rows
        are left as they are. Where a matcher accepts, its stop ids are allowed too."""
        import llguidance.numpy as lln
        rows = list(rows)
        if not rows:
            return
        assert mask_SW.dtype == np.int32 and mask_SW.shape[1] == self.words and mask_SW.flags["C_CONTIGUOUS"]
        lln.fill_next_token_bitmask_par(self.executor, [(m.m, r) for m, r in rows], mask_SW)
        bits_SW = mask_SW.view(np.uint32)
        for m, r in rows:
            if m.stop_ids and m.accepting:
                ids = np.asarray(m.stop_ids, np.int64)
                np.bitwise_or.at(bits_SW[r], ids // 32, (np.uint32(1) << (ids % 32).astype(np.uint32)))


def unpack_bits(mask_SW: np.ndarray, vocab_size: int) -> np.ndarray:
    """The host reference of the device's unpacking: [S, V] bool from [S, W] int32 (bit t % 32 of word t // 32)."""
    bits = np.unpackbits(np.ascontiguousarray(mask_SW).view(np.uint8), axis=-1, bitorder="little")
    return bits[:, :vocab_size].astype(bool)

