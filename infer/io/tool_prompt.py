"""Tools for a chat template that does not know them: the conversation rewritten as plain system / user /
assistant text in the Hermes format (the one Qwen2.5's and NousResearch's Hermes templates write).

    msgs = fallback_messages(messages, tools)   # tools: OpenAI's [{"type": "function", "function": {...}}] or None

What changes, and why each way:
- `tools` become a system message (appended to the conversation's own system message, or a new first one):
  TOOLS_PROMPT lists each tool as its JSON on one line inside <tools></tools> and asks for each call as
  `<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>`, the format
  infer/server/tool_calls.py parses and a forced call is constrained to.
- An assistant message's `tool_calls` are written after its text in that same format, so the model sees its
  earlier calls as it was asked to write them.
- `tool` messages become one `user` message per run of them, each result inside <tool_response></tool_response>
  (Qwen2.5's rendering): a role every template renders, where a `tool` role may be refused or mis-rendered.

A template that refers to `tools` gets the messages and the tools as they are, as transformers'
apply_chat_template hands them over; one that does not but mentions "tool" anywhere handles (or refuses) tool
calls and results itself, so only the tools prompt is added (`calls_as_text=False`; infer/io/chat_template.py
decides which).
"""
from __future__ import annotations

import json
from typing import List, Optional, Sequence

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def tools_prompt(tools: Sequence[dict]) -> str:
    """The system prompt text that lists `tools` and the call format."""
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def call_text(name: str, arguments) -> str:
    """One call as the model is asked to write it (arguments: a dict, or its JSON text)."""
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def _text(content) -> str:
    return content if isinstance(content, str) else ""


def fallback_messages(messages: Sequence[dict], tools: Optional[Sequence[dict]],
                      calls_as_text: bool = True) -> List[dict]:
    """The conversation with tools (and, calls_as_text, tool calls and tool results) as text in system / user /
    assistant messages."""
    out: List[dict] = []
    tool_run = False  # the last message written is a run of tool results
    for m in messages if calls_as_text else ():
        if m.get("role") == "tool":
            result = "<tool_response>\n" + _text(m.get("content")) + "\n</tool_response>"
            if tool_run:
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result})
            tool_run = True
            continue
        tool_run = False
        plain = {k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")}
        calls = [call_text(c["function"]["name"], c["function"].get("arguments", {}))
                 for c in m.get("tool_calls") or []]
        if calls or m.get("role") == "assistant":
            plain["content"] = "\n".join(([_text(m.get("content"))] if _text(m.get("content")) else []) + calls)
        out.append(plain)
    if not calls_as_text:
        out = [dict(m) for m in messages]
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = dict(out[0], content=(_text(out[0].get("content")) + "\n\n" + prompt).lstrip("\n"))
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
