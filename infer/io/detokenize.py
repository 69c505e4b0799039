"""Streaming detokenization: token ids in, complete text out, one token at a time.

Decoding one token at a time is wrong twice over: a multi-byte character can
span tokens (byte-level BPE, byte fallback), and tokenizers decode a token
differently depending on what precedes it (SentencePiece drops a word's
leading space at the start of a string). So each step decodes a short window
of recent ids twice, without and with the new ids, and emits the difference:

    prefix = decode(ids[prefix_offset:read_offset])   # already emitted
    full   = decode(ids[prefix_offset:])
    emit full[len(prefix):] unless it ends in U+FFFD (an incomplete character: wait for more bytes)

The window starts inside the prompt (its last `context` tokens), so the first
generated token decodes in context while the prompt itself is never emitted.
`flush()` at the end emits whatever is held back (a genuinely invalid byte
sequence then shows as U+FFFD). Cost per step: two decodes of a few tokens.
"""
from typing import Iterable, List, Sequence

REPLACEMENT = "\ufffd"


class StreamingDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), context: int = 5,
                 skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: List[int] = [int(i) for i in prompt_ids]
        self.prompt_len = len(self.ids)
        self.prefix_offset = max(0, self.prompt_len - context)
        self.read_offset = self.prompt_len
        self.text = ""  # everything emitted so far

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _step(self, final: bool) -> str:
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT) and not final):
            return ""  # nothing new yet (special token skipped, or an incomplete character held back)
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new
        return new

    def add(self, token_id: int) -> str:
        """Append one generated id; returns the newly completed text ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._step(final=False)

    def add_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """Emit any held-back text at the end of generation."""
        if self.read_offset == len(self.ids):
            return ""
        return self._step(final=True)

    @property
    def generated_ids(self) -> List[int]:
        return self.ids[self.prompt_len:]
