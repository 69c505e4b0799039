"""The OpenAI request fields we accept, checked one by one, and the response shapes we send.

Every refusal is an APIError carrying the OpenAI error shape
{"error": {"message", "type", "param", "code"}} with the offending field in `param`.
Fields the OpenAI API has but this server does not implement are refused when set to
anything but their neutral value (`best_of` other than n, `echo` together with `logprobs`);
unknown fields are ignored, as OpenAI-compatible servers do. Honoured beyond the basic
sampling fields: presence/frequency penalties, logit_bias, top_logprobs (completions
`logprobs: N`, chat `logprobs: true, top_logprobs: N`, N <= 20), echo (completions, without
logprobs), and vLLM's repetition_penalty, min_tokens, ignore_eos. Numbers are bounded to what the
engine's per-row arrays hold (int32 top_k, uint32 seed, float32 temperature), strict JSON only
(no NaN / Infinity), and text must be valid Unicode (a lone surrogate cannot be tokenized).

Structured outputs (both endpoints): `response_format` {"type": "text" | "json_object" | "json_schema",
"json_schema": {"name", "schema", "strict", "description"}}, and vLLM's extension fields `guided_json` (a schema),
`guided_regex`, `guided_grammar` (Lark) and `guided_choice` (a list of strings), at most one of them; each
becomes a SamplingParams.constraint (infer/config/sampling_params.py's Constraint). A schema, regex or grammar
llguidance refuses is a 400 naming the field.

Chat messages may be `tool` results (with `tool_call_id`) and assistant messages with `tool_calls` (content then
optional; arguments the JSON text of an object); the request's `tools` / `tool_choice` are read by
infer/server/tool_request.py, the reply's calls by infer/server/tool_calls.py.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any, List, Optional, Sequence, Union

from infer.config import SamplingParams
from infer.config.sampling_params import INT32_MAX, MAX_BIAS, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, Constraint

MAX_STOP_STRINGS = 4


class APIError(Exception):
    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type
        self.headers = headers

    def body(self) -> dict:
        clean = lambda t: t if t is None else t.encode("utf-8", "backslashreplace").decode("utf-8")  # surrogates
        return {"error": {"message": clean(self.message), "type": self.type, "param": clean(self.param),
                          "code": self.code}}


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """The request body as strict JSON (NaN / Infinity refused); any failure, nesting too deep included, is a 400."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(f"the request body is not valid JSON: {type(e).__name__}: {e}"[:300],
                       code="invalid_json") from None


def _unicode(v: str) -> bool:
    """Text that encodes as UTF-8: no lone surrogates (JSON allows "\\ud800"; no tokenizer does)."""
    try:
        v.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(body: dict, name: str, check, expect: str, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if not check(v):
        raise APIError(f"'{name}': expected {expect}, got {v!r}"[:300], param=name, code="invalid_value")
    return v


@dataclasses.dataclass
class GenerationRequest:
    """What the engine needs, from either endpoint."""

    model: str
    prompts: List[Union[str, List[int]]]  # completions may send several; chat sends one (ids)
    sampling: SamplingParams
    n: int
    stop: tuple
    stream: bool
    logprobs: bool
    include_usage: bool = True
    echo: bool = False  # completions: the prompt's text before each choice's text


RESPONSE_FORMATS = ("text", "json_object", "json_schema")
GUIDED = ("guided_json", "guided_regex", "guided_grammar", "guided_choice")


def _response_format(v: Any) -> Optional[Constraint]:
    name = "response_format"
    if not isinstance(v, dict) or v.get("type") not in RESPONSE_FORMATS:
        raise APIError(f"'{name}': expected an object with type one of {RESPONSE_FORMATS}, got {v!r}"[:300],
                       param=name, code="invalid_value")
    if v["type"] == "text":
        return None
    if v["type"] == "json_object":
        return Constraint.json_object()
    spec = v.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
        raise APIError(f"'{name}': type json_schema needs json_schema: {{\"name\": ..., \"schema\": {{...}}}}, "
                       f"got {spec!r}"[:300], param=name, code="invalid_value")
    if not isinstance(spec.get("name", ""), str) or not isinstance(spec.get("strict", False), (bool, type(None))):
        raise APIError(f"'{name}': json_schema.name must be a string and json_schema.strict a boolean",
                       param=name, code="invalid_value")
    return Constraint.json_schema(spec["schema"])


def _constraint(body: dict) -> Optional[Constraint]:
    """The request's structured-output constraint (response_format or one guided_* field), or None."""
    plain = isinstance(body.get("response_format"), dict) and body["response_format"].get("type") == "text"
    given = [f for f in ("response_format",) + GUIDED if body.get(f) is not None and not (
        f == "response_format" and plain)]
    if len(given) > 1:
        raise APIError(f"'{given[1]}': give at most one of response_format and {', '.join(GUIDED)} "
                       f"(got {', '.join(given)})", param=given[1], code="invalid_value")
    if not given:
        return None
    name, v = given[0], body[given[0]]
    try:
        if name == "response_format":
            return _response_format(v)
        if name == "guided_json":
            if not isinstance(v, (dict, bool, str)):
                raise ValueError(f"expected a JSON schema (an object or its JSON text), got {type(v).__name__}")
            return Constraint.json_schema(v)
        if name == "guided_choice":
            if not (isinstance(v, list) and v and all(isinstance(c, str) and c and _unicode(c) for c in v)):
                raise ValueError("expected a non-empty list of non-empty strings")
            return Constraint.regex("|".join(_regex_literal(c) for c in v))
        if not (isinstance(v, str) and v and _unicode(v)):
            raise ValueError(f"expected a non-empty string, got {v!r}"[:200])
        return Constraint.regex(v) if name == "guided_regex" else Constraint.grammar(v)
    except ValueError as e:
        raise APIError(f"'{name}': {e}"[:1000], param=name, code="invalid_value") from None


def _regex_literal(text: str) -> str:
    """text as a regex matching exactly it (llguidance's syntax: Rust's regex crate)."""
    return "(" + "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~" else c for c in text) + ")"


def _sampling(body: dict, max_tokens_field: str, max_model_len: int) -> SamplingParams:
    max_tokens = _get(body, max_tokens_field, lambda v: _is_int(v) and 1 <= v <= max_model_len,
                      f"an integer in [1, {max_model_len}] (the context length)", 16)
    temperature = _get(body, "temperature", lambda v: _is_num(v) and 0 <= v <= 2, "a number in [0, 2]", 1.0)
    top_p = _get(body, "top_p", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]", 1.0)
    top_k = _get(body, "top_k", lambda v: _is_int(v) and -1 <= v <= INT32_MAX,
                 f"an integer in [-1, {INT32_MAX}] (-1 or 0: off)", 0)
    min_p = _get(body, "min_p", lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]", 0.0)
    seed = _get(body, "seed", lambda v: _is_int(v) and 0 <= v < 2 ** 32, "an integer in [0, 2**32)", None)
    presence, frequency = (_get(body, name, lambda v: _is_num(v) and -2 <= v <= 2, "a number in [-2, 2]", 0.0)
                           for name in ("presence_penalty", "frequency_penalty"))
    repetition = _get(body, "repetition_penalty", lambda v: _is_num(v) and 0 < v <= 100,
                      "a number in (0, 100] (1: off)", 1.0)
    bias = _get(body, "logit_bias", lambda v: isinstance(v, dict) and len(v) <= MAX_LOGIT_BIAS and all(
        isinstance(k, str) and k.isascii() and k.isdigit() and int(k) <= INT32_MAX
        and _is_num(b) and -MAX_BIAS <= b <= MAX_BIAS for k, b in v.items()),
        f"an object of at most {MAX_LOGIT_BIAS} token ids (as strings) to biases in [-100, 100]", {})
    min_tokens = _get(body, "min_tokens", lambda v: _is_int(v) and 0 <= v <= max_tokens,
                      f"an integer in [0, {max_tokens}] (at most max_tokens)", 0)
    ignore_eos = _get(body, "ignore_eos", lambda v: isinstance(v, bool), "a boolean", False)
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=max(0, int(top_k)),
                          min_p=float(min_p), max_new_tokens=int(max_tokens),
                          seed=int(seed) if seed is not None else secrets.randbits(32),
                          presence_penalty=float(presence), frequency_penalty=float(frequency),
                          repetition_penalty=float(repetition), logit_bias={int(k): float(b) for k, b in bias.items()},
                          min_tokens=int(min_tokens), ignore_eos=ignore_eos, constraint=_constraint(body))


def _common(body: dict, served: Sequence[str], max_num_seqs: int):
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object", code="invalid_json")
    model = _get(body, "model", lambda v: isinstance(v, str), "a string")
    if model is None:
        raise APIError("'model' is required", param="model", code="missing_field")
    if model not in served:
        raise APIError(f"'model': the model {model!r} does not exist here; this server serves {list(served)}",
                       param="model", code="model_not_found")
    n = _get(body, "n", lambda v: _is_int(v) and 1 <= v <= max_num_seqs, f"an integer in [1, {max_num_seqs}]", 1)
    stream = _get(body, "stream", lambda v: isinstance(v, bool), "a boolean", False)
    stop = _get(body, "stop", lambda v: (isinstance(v, str) and _unicode(v)) or (
        isinstance(v, list) and len(v) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s and _unicode(s)
                                                                   for s in v)),
                f"a string or a list of at most {MAX_STOP_STRINGS} non-empty strings", [])
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    opts = _get(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = _get(opts, "include_usage", lambda v: isinstance(v, bool), "a boolean", True)
    return model, n, stream, stop, include_usage


def parse_completion(body: Any, served: Sequence[str], max_model_len: int, max_num_seqs: int,
                     max_prompts: int = 64) -> GenerationRequest:
    model, n, stream, stop, include_usage = _common(body, served, max_num_seqs)
    prompt = body.get("prompt")
    ok_ids = lambda p: isinstance(p, list) and len(p) > 0 and all(_is_int(t) for t in p)
    if isinstance(prompt, str) or ok_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ok_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise APIError("'prompt': expected a string, a list of token ids, or a list of those (non-empty)",
                       param="prompt", code="invalid_value")
    if any(isinstance(p, str) and not p for p in prompts):
        raise APIError("'prompt': empty prompt", param="prompt", code="invalid_value")
    if len(prompts) > max_prompts:
        raise APIError(f"'prompt': {len(prompts)} prompts; at most {max_prompts} per request", param="prompt",
                       code="too_many_prompts")
    if any(isinstance(p, str) and not _unicode(p) for p in prompts):
        raise APIError("'prompt': not valid Unicode text (a lone surrogate?)", param="prompt", code="invalid_value")
    echo = _get(body, "echo", lambda v: isinstance(v, bool), "a boolean", False)
    if body.get("best_of") not in (None, 1, n):
        raise APIError("'best_of': not supported", param="best_of", code="unsupported")
    logprobs = _get(body, "logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_TOP_LOGPROBS,
                    f"an integer in [0, {MAX_TOP_LOGPROBS}] or null", None)
    if echo and logprobs is not None:  # the engine's step returns the logits of each sequence's last token only
        raise APIError("'echo' with 'logprobs': prompt logprobs are not supported (the engine computes no "
                       "logits for prompt positions); echo without logprobs is", param="echo", code="unsupported")
    sampling = dataclasses.replace(_sampling(body, "max_tokens", max_model_len), top_logprobs=logprobs or 0)
    return GenerationRequest(model, prompts, sampling, n, stop, stream, logprobs is not None, include_usage, echo)


ROLES = ("system", "user", "assistant", "tool")


def _content(i: int, m: dict, optional: bool = False) -> Optional[str]:
    """A message's text: a string or a list of text parts (None only where optional and absent)."""
    content = m.get("content")
    if content is None and optional:
        return None
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                   for c in content):
            raise APIError(f"'messages[{i}].content': only text parts are supported",
                           param=f"messages[{i}].content", code="invalid_value")
        content = "".join(c["text"] for c in content)
    if not isinstance(content, str) or not _unicode(content):
        raise APIError(f"'messages[{i}].content': expected a string of valid Unicode text",
                       param=f"messages[{i}].content", code="invalid_value")
    return content


def _tool_call(i: int, j: int, c: Any) -> dict:
    """An assistant message's earlier call, its arguments parsed (templates read them as an object, as vLLM
    hands them over)."""
    field = f"messages[{i}].tool_calls[{j}]"
    f = c.get("function") if isinstance(c, dict) else None
    if not isinstance(f, dict) or c.get("type", "function") != "function" or not isinstance(f.get("name"), str) \
            or not isinstance(c.get("id", ""), str):
        raise APIError(f"'{field}': expected {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                       f"\"arguments\"}}}}", param=field, code="invalid_value")
    try:
        args = json.loads(f.get("arguments") or "{}", parse_constant=_no_constant)
    except (TypeError, ValueError, RecursionError):
        args = None
    if not isinstance(args, dict):
        raise APIError(f"'{field}.function.arguments': expected the JSON text of an object",
                       param=f"{field}.function.arguments", code="invalid_value")
    return {"id": c.get("id", ""), "type": "function", "function": {"name": f["name"], "arguments": args}}


def _message(i: int, m: Any) -> dict:
    """One chat message, checked: role and text, a tool result's tool_call_id, an assistant's tool_calls."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise APIError(f"'messages[{i}]': expected an object with role one of {ROLES}", param=f"messages[{i}]",
                       code="invalid_value")
    calls = m.get("tool_calls") if m["role"] == "assistant" else None
    if calls is not None and not (isinstance(calls, list) and calls):
        raise APIError(f"'messages[{i}].tool_calls': expected a non-empty list", param=f"messages[{i}].tool_calls",
                       code="invalid_value")
    out = {"role": m["role"], "content": _content(i, m, optional=bool(calls))}
    if calls:
        out["tool_calls"] = [_tool_call(i, j, c) for j, c in enumerate(calls)]
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise APIError(f"'messages[{i}].tool_call_id': a tool message needs the id of the call it answers",
                           param=f"messages[{i}].tool_call_id", code="invalid_value")
        out["tool_call_id"] = m["tool_call_id"]
    return out


def parse_chat(body: Any, served: Sequence[str], max_model_len: int, max_num_seqs: int) -> tuple:
    """(GenerationRequest without prompts, messages) for /v1/chat/completions."""
    model, n, stream, stop, include_usage = _common(body, served, max_num_seqs)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError("'messages': expected a non-empty list of {role, content}", param="messages",
                       code="invalid_value")
    clean = [_message(i, m) for i, m in enumerate(msgs)]
    if body.get("echo") not in (None, False):
        raise APIError("'echo': not supported", param="echo", code="unsupported")
    if body.get("best_of") not in (None, 1):
        raise APIError("'best_of': not supported in chat", param="best_of", code="unsupported")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    logprobs = _get(body, "logprobs", lambda v: isinstance(v, bool), "a boolean", False)
    top = _get(body, "top_logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_TOP_LOGPROBS,
               f"an integer in [0, {MAX_TOP_LOGPROBS}]", 0)
    if top and not logprobs:
        raise APIError("'top_logprobs': needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    sampling = dataclasses.replace(_sampling(body, field, max_model_len), top_logprobs=top)
    req = GenerationRequest(model, [], sampling, n, stop, stream, logprobs, include_usage)
    return req, clean


# ---- responses --------------------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(tokens: List[str], logprobs: List[float], offset: int = 0,
                        top: Optional[List[List[tuple]]] = None) -> dict:
    """top: per token its [(text, log p)] most likely, descending (None: not asked)."""
    offsets, o = [], offset
    for t in tokens:
        offsets.append(o)
        o += len(t)
    top_out = None if top is None else [{text: lp for text, lp in alts} for alts in top]
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top_out, "text_offset": offsets}


def chat_logprobs(tokens: List[str], logprobs: List[float], top: Optional[List[List[tuple]]] = None) -> dict:
    """top: per token its [(text, log p)] most likely, descending (None: not asked)."""
    alt = lambda text, lp: {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [dict(alt(t, lp), top_logprobs=[alt(a, b) for a, b in top[i]] if top else [])
                        for i, (t, lp) in enumerate(zip(tokens, logprobs))]}


def envelope(kind: str, rid: str, model: str, choices: list, usage_: Optional[dict] = None,
             created: Optional[int] = None) -> dict:
    out = {"id": rid, "object": kind, "created": created or int(time.time()), "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out
