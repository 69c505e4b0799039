"""A chat request's tools: `tools`, `tool_choice`, `parallel_tool_calls`, checked by name, and the constraint
that forces a call.

    tr = parse_tools(body)        # None when the request has no tools; APIError (400) naming the field
    tr.prompt_tools               # what the chat template is given (None for tool_choice "none")
    tr.constraint                 # "required" / a named function: a Lark grammar (llguidance); else None
    tr.names                      # the tools a reply may call (infer/server/tool_calls.py parses only those)

tool_choice: "none" (the tools are not shown to the model and its output is not parsed), "auto" (the default
with tools: the model decides; its output is parsed for calls), "required" (at least one call, of any tool),
{"type": "function", "function": {"name": ...}} (exactly one call of that tool). The forced choices constrain
the output to the Hermes format the fallback prompt asks for (infer/io/tool_prompt.py):
`<tool_call>\\n{"name":"f","arguments":{...}}\\n</tool_call>`, one JSON schema per tool (its name as a const,
`arguments` its `parameters`), compact JSON; "required" with `parallel_tool_calls` (default true) allows more
calls, one per line. So the output always parses and its arguments validate against the tool's schema.

Each tool is {"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}: a name of
1-64 letters, digits, "_" or "-" (OpenAI's rule), unique; `parameters` a JSON schema of an object that
llguidance accepts (default: an object with no properties). A bad one is a 400 naming `tools[i].function.parameters`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional, Tuple

from infer.config.sampling_params import Constraint
from infer.server.protocol import APIError

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHOICES = ("none", "auto", "required")
MAX_TOOLS = 128
NO_PARAMETERS = {"type": "object", "properties": {}}


def _bad(field: str, message: str) -> APIError:
    return APIError(f"'{field}': {message}"[:1000], param=field, code="invalid_value")


@dataclasses.dataclass(frozen=True)
class ToolRequest:
    tools: Tuple[dict, ...]  # as given, each with its parameters filled in
    choice: str              # "none" | "auto" | "required" | "function"
    function: Optional[str] = None  # the named function (choice "function")
    parallel: bool = True

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(t["function"]["name"] for t in self.tools)

    @property
    def prompt_tools(self) -> Optional[list]:
        return None if self.choice == "none" or not self.tools else list(self.tools)

    @property
    def parses(self) -> bool:
        """The reply is read for tool calls."""
        return self.choice != "none" and bool(self.tools)

    @property
    def forced(self) -> bool:
        """The reply is constrained to calls ("required" or a named function)."""
        return self.choice in ("required", "function")

    @property
    def constraint(self) -> Optional[Constraint]:
        if not self.forced:
            return None
        try:
            return Constraint.grammar(forced_grammar(
                [t for t in self.tools if self.choice == "required" or t["function"]["name"] == self.function],
                many=self.choice == "required" and self.parallel))
        except ValueError as e:  # each schema alone was accepted; llguidance refusing them together is still ours
            raise _bad("tool_choice", f"the forced call's grammar was refused: {e}") from None


def call_schema(tool: dict) -> dict:
    """The JSON schema of one call of `tool`: {"name": its name, "arguments": its parameters}, compact."""
    params = dict(tool["function"]["parameters"])
    hoisted = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}  # "#/$defs/x" refs the root
    return {"type": "object", "properties": {"name": {"const": tool["function"]["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False,
            "x-guidance": {"whitespace_flexible": False}, **hoisted}


def forced_grammar(tools, many: bool) -> str:
    """A Lark grammar (llguidance's dialect): one `<tool_call>` block of one of `tools` (many: one or more)."""
    lines = ['start: call ("\\n" call)*' if many else "start: call",
             'call: "<tool_call>\\n" body "\\n</tool_call>"',
             "body: " + " | ".join(f"tool{i}" for i in range(len(tools)))]
    lines += [f"tool{i}: %json {json.dumps(call_schema(t))}" for i, t in enumerate(tools)]
    return "\n".join(lines)


def _tool(i: int, t: Any) -> dict:
    field = f"tools[{i}]"
    if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
        raise _bad(field, 'expected {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    f = t["function"]
    if not isinstance(f.get("name"), str) or not NAME.fullmatch(f["name"]):
        raise _bad(f"{field}.function.name", f"expected 1-64 letters, digits, '_' or '-', got {f.get('name')!r}")
    if not isinstance(f.get("description", ""), (str, type(None))):
        raise _bad(f"{field}.function.description", "expected a string")
    if not isinstance(f.get("strict", False), (bool, type(None))):
        raise _bad(f"{field}.function.strict", "expected a boolean")
    params = f.get("parameters")
    params = NO_PARAMETERS if params is None else params
    if not isinstance(params, dict):
        raise _bad(f"{field}.function.parameters", f"expected a JSON schema object, got {type(params).__name__}")
    if params.get("type", "object") != "object":  # the arguments are an object (OpenAI's rule; the parser's too)
        raise _bad(f"{field}.function.parameters", f"the arguments are an object: type must be \"object\", got "
                                                   f"{params['type']!r}"[:300])
    try:
        Constraint.json_schema(params)
    except ValueError as e:
        raise _bad(f"{field}.function.parameters", f"not a valid JSON schema: {e}") from None
    return {**t, "function": {**f, "parameters": params}}


def parse_tools(body: dict) -> Optional[ToolRequest]:
    """The request's tool fields, checked; None when it has no tools and no tool_choice."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", f"expected a boolean, got {parallel!r}"[:200])
    if tools is None and choice is None:
        return None
    if tools is not None and (not isinstance(tools, list) or len(tools) > MAX_TOOLS):
        raise _bad("tools", f"expected a list of at most {MAX_TOOLS} function definitions")
    tools = tuple(_tool(i, t) for i, t in enumerate(tools or []))
    names = [t["function"]["name"] for t in tools]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise _bad(f"tools[{names.index(dup, names.index(dup) + 1)}].function.name", f"{dup!r} is defined twice")
    function = None
    if choice is None:
        choice = "auto" if tools else "none"
    elif isinstance(choice, dict):
        f = choice.get("function")
        if choice.get("type") != "function" or not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise _bad("tool_choice", 'expected "none", "auto", "required" or '
                                      '{"type": "function", "function": {"name": ...}}')
        function, choice = f["name"], "function"
        if function not in names:
            raise _bad("tool_choice", f"the function {function!r} is not one of the request's tools {names}"[:300])
    elif choice not in CHOICES:
        raise _bad("tool_choice", f'expected one of {CHOICES} or {{"type": "function", "function": {{"name": ...}}}}'
                                  f", got {choice!r}"[:300])
    if choice in ("auto", "required") and not tools:
        raise _bad("tool_choice", f"{choice!r} needs 'tools' (a non-empty list)")
    return ToolRequest(tools, choice, function, True if parallel is None else parallel)
