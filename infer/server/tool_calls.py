"""Tool calls out of a model's text: whole (a response) or as it streams (deltas), the same answer either way.

    content, calls = parse_tool_calls(text, names={"get_weather"})   # content: the text outside the calls or None
    s = ToolCallStream(names)                                        # streaming: per choice
    for piece in pieces: events = s.feed(piece)                      # [str (content) | dict (a tool_calls delta)]
    events = s.finish()                                              # what was held back; s.calls: those found

Formats read:
- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks anywhere in the text (the
  format infer/io/tool_prompt.py asks for and a forced call is constrained to); whitespace inside a block is free.
- Llama 3.1's JSON: the whole output one object `{"name": ..., "parameters": {...}}` (or "arguments"),
  optionally after `<|python_tag|>`; read only when it names one of the request's tools (a JSON answer that
  does not is an answer).

A block that does not parse as a call (not JSON, no string "name", arguments not an object or an object's JSON
text, a name that is not one of the request's tools, or never closed) stays in the content as written. The
content is the text outside the calls, leading and trailing whitespace dropped; None when nothing is left.

Streaming emits content as soon as it cannot be the start of `<tool_call>`, holds a block until it closes, then
emits the call as OpenAI streams one: {"index", "id", "type": "function", "function": {"name", "arguments": ""}},
then {"index", "function": {"arguments": <the JSON text>}}. An output that opens with `{` or `<|python_tag|>`
is held to the end (it may be a Llama 3.1 call). Concatenating a stream's content equals parse_tool_calls's.

A forced reply (`forced=True`: tool_choice "required" or a named function, whose grammar fixes each block as
`{"name":"f","arguments":{...}}`) streams each call as it is written: the name once `"arguments":` follows it,
then the arguments in pieces as the tokens come (all but a last "}" that may close the call's object), kept as the
model wrote them; a reply cut off by max_tokens inside a call ends with that call's arguments as far as they got
(finish_reason "length", as OpenAI does).
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
from typing import Collection, List, Optional, Tuple, Union

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
FORCED_PREFIX = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = dataclasses.field(default_factory=new_call_id)

    def message(self) -> dict:
        """As in a response's message.tool_calls."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_call(text: str, names: Optional[Collection[str]] = None) -> Optional[ToolCall]:
    """One call's JSON ({"name", "arguments" | "parameters"}), or None when it is not one."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag (it may become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


Event = Union[str, dict]


class ToolCallStream:
    """Incremental parser of one choice's output; feed() and finish() return content strings and call deltas."""

    def __init__(self, names: Optional[Collection[str]] = None, forced: bool = False):
        self.names, self.forced = names, forced
        self._open: Optional[list] = None  # forced: the call being streamed [ToolCall id, name, args start, sent]
        self.calls: List[ToolCall] = []
        self._pending = ""       # text not yet emitted (outside a block)
        self._block: Optional[str] = None  # inside an open block: its text so far
        self._started = False    # some non-whitespace content was emitted
        self._space = ""         # whitespace held after the last emitted content (dropped at the end)
        self._whole: Optional[bool] = None  # None: undecided (only whitespace so far); True: held to the end

    def _content(self, text: str, out: List[Event]) -> None:
        if not text:
            return
        stripped = text.rstrip()
        if not stripped:  # only whitespace: held until something follows it
            if self._started:
                self._space += text
            return
        if not self._started:
            text, self._started = text.lstrip(), True
            stripped = text.rstrip()
        out.append(self._space + stripped)
        self._space = text[len(stripped):]

    def _call(self, call: ToolCall, out: List[Event]) -> None:
        i = len(self.calls)
        self.calls.append(call)
        out.append({"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}})
        out.append({"index": i, "function": {"arguments": call.arguments}})

    def feed(self, text: str) -> List[Event]:
        out: List[Event] = []
        self._pending += text
        if self._whole is None:
            head = self._pending.lstrip()
            if not head:
                return out
            self._whole = head[0] == "{" or PYTHON_TAG.startswith(head[:len(PYTHON_TAG)])
            if self._whole and not head.startswith(PYTHON_TAG) and head[0] != "{":
                self._whole = None  # a prefix of <|python_tag|> so far: undecided
                return out
        if self._whole:
            return out
        self._scan(out)
        return out

    def _scan(self, out: List[Event]) -> None:
        while True:
            if self._block is None:
                at = self._pending.find(OPEN)
                if at < 0:
                    keep = _held_prefix(self._pending, OPEN)
                    self._content(self._pending[:len(self._pending) - keep], out)
                    self._pending = self._pending[len(self._pending) - keep:]
                    return
                self._content(self._pending[:at], out)
                self._block, self._pending = "", self._pending[at + len(OPEN):]
            at = self._pending.find(CLOSE)
            if self.forced:
                self._stream_arguments(self._pending if at < 0 else self._pending[:at], "open" if at < 0 else "closed",
                                       out)
            if at < 0:
                return
            body, self._pending, self._block = self._pending[:at], self._pending[at + len(CLOSE):], None
            if self._open is not None:
                self._open = None
                continue
            call = parse_call(body, self.names)
            if call is None:
                self._content(OPEN + body + CLOSE, out)
            else:
                self._call(call, out)

    def _stream_arguments(self, body: str, state: str, out: List[Event]) -> None:
        """forced: the call's name as soon as it is written, then its arguments as they come, all but a last "}"
        that may close the call's object (the grammar fixes the form: {"name":"f","arguments":{...}})."""
        if self._open is None:
            m = FORCED_PREFIX.match(body)
            if m is None or (self.names is not None and m.group(1) not in self.names):
                return
            call_id = new_call_id()
            self._open = [call_id, m.group(1), m.end(), 0]
            self.calls.append(ToolCall(m.group(1), "", call_id))
            out.append({"index": len(self.calls) - 1, "id": call_id, "type": "function",
                        "function": {"name": m.group(1), "arguments": ""}})
        call_id, name, start, sent = self._open
        tail = body[start:]
        if state == "closed":  # the call's object ends with the block: its last "}" is the object's own
            tail = tail.rstrip()
            end = len(tail) - 1 if tail.endswith("}") else len(tail)
        elif state == "cut":  # the output ended inside the block: everything written but a partial close tag
            end = len(tail) - _held_prefix(tail, CLOSE)
        else:  # a last "}" followed by nothing but whitespace and the start of the close tag may be the object's
            j = tail.rfind("}")
            end = j if j >= 0 and CLOSE.startswith(tail[j + 1:].lstrip()) else len(tail)
        if end > sent:
            out.append({"index": len(self.calls) - 1, "function": {"arguments": tail[sent:end]}})
            self._open[3] = sent = end
        self.calls[-1] = ToolCall(name, tail[:sent], call_id)

    def finish(self) -> List[Event]:
        """Everything still held: an unclosed block is content; a held whole output is a Llama 3.1 call or not."""
        out: List[Event] = []
        if self._whole:
            body = self._pending.strip()
            body = body[len(PYTHON_TAG):] if body.startswith(PYTHON_TAG) else body
            call = parse_call(body, self.names) if self.names else None
            if call is not None:
                self._call(call, out)
                self._pending = ""
                return out
            self._whole = False
            self._scan(out)
        if self._block is not None and self._open is not None:  # forced, cut off: the call as far as it got
            self._stream_arguments(self._pending, "cut", out)
        elif self._block is not None:
            self._content(OPEN + self._pending, out)
        else:
            self._content(self._pending, out)
        self._pending, self._block = "", None
        return out


def parse_tool_calls(text: str, names: Optional[Collection[str]] = None,
                     forced: bool = False) -> Tuple[Optional[str], List[ToolCall]]:
    """(content or None, calls) of a whole output; names: the request's tools (None: any name); forced: the
    output was constrained to calls (arguments kept as written, as ToolCallStream(forced=True) streams them)."""
    s = ToolCallStream(names, forced)
    events = s.feed(text) + s.finish()
    content = "".join(e for e in events if isinstance(e, str))
    return content or None, s.calls


def delta(event: Event) -> dict:
    """A chat chunk's delta for one event of ToolCallStream."""
    return {"content": event} if isinstance(event, str) else {"tool_calls": [event]}


def finish_reason(reason: Optional[str], calls: List[ToolCall]) -> Optional[str]:
    """OpenAI's "tool_calls" when the reply ended by itself after calling; a cut-off reply keeps "length"."""
    return "tool_calls" if calls and reason == "stop" else reason
