"""The request bodies and error responses of the two POST routes, as pydantic models, for the OpenAPI schema.

protocol.py validates each body field by field (its messages name the field); these models
declare the same fields with the same bounds, so schema-driven clients and fuzzers
(schemathesis, client generators) see what the routes take. `openapi_body` turns one into a
route's `openapi_extra`: the request body inline (no $refs), `model` limited to the served
names, and the error statuses every route can answer, each with the OpenAI error shape.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from infer.config.sampling_params import INT32_MAX, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS
from infer.server.protocol import MAX_STOP_STRINGS
from infer.server.tool_request import MAX_TOOLS

Stop = Optional[Union[str, List[str]]]


class JsonSchemaFormat(BaseModel):
    name: Optional[str] = None
    schema_: Union[Dict[str, Any], bool] = Field(alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


class ResponseFormat(BaseModel):
    """Structured outputs; at most one of response_format and the guided_* fields (infer/server/protocol.py)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = Field(None, description="with type json_schema")


Text = Annotated[str, Field(min_length=1)]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are ignored, as OpenAI-compatible servers do

    model: str
    max_tokens: Optional[int] = Field(None, ge=1, description="at most the context length")
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1, le=INT32_MAX, description="-1 or 0: off")
    min_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = Field(None, ge=0, lt=2 ** 32)
    n: Optional[int] = Field(None, ge=1)
    stream: Optional[bool] = None
    stream_options: Optional[Dict[str, bool]] = None
    stop: Stop = Field(None, description=f"a string or at most {MAX_STOP_STRINGS} non-empty strings")
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=100, description="1: off (vLLM's extension)")
    logit_bias: Optional[Dict[str, Annotated[float, Field(ge=-100, le=100)]]] = Field(
        None, max_length=MAX_LOGIT_BIAS, description="token id (as a string, below the vocabulary size) -> bias")
    min_tokens: Optional[int] = Field(None, ge=0, description="at most max_tokens")
    ignore_eos: Optional[bool] = None
    user: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    guided_json: Optional[Union[Dict[str, Any], str]] = Field(None, description="a JSON schema (vLLM's extension)")
    guided_regex: Optional[str] = Field(None, min_length=1, description="the output matches it (vLLM's extension)")
    guided_grammar: Optional[str] = Field(None, min_length=1, description="a Lark grammar (vLLM's extension)")
    guided_choice: Optional[List[Text]] = Field(None, min_length=1, description="the output is one of these")


Ids = Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1)]  # below the vocabulary size: openapi_body


class CompletionRequest(_Sampling):
    prompt: Union[Text, Ids, Annotated[List[Union[Text, Ids]], Field(min_length=1)]]
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Optional[bool] = Field(None, description="not with logprobs")
    best_of: Optional[int] = Field(None, description="only 1 or n")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the JSON text of an object")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[Union[str, List[TextPart]]] = Field(None, description="optional only beside tool_calls")
    tool_calls: Optional[Annotated[List[ToolCall], Field(min_length=1)]] = Field(None, description="assistant")
    tool_call_id: Optional[str] = Field(None, description="tool: the call it answers (required there)")


class FunctionDefinition(BaseModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = Field(None, description="a JSON schema (default: no arguments)")
    strict: Optional[bool] = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Tool]] = Field(None, max_length=MAX_TOOLS, description="function names unique")
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = Field(
        None, description="default auto with tools; required or a named function force a call (needs tools)")
    parallel_tool_calls: Optional[bool] = None
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="needs logprobs: true")
    echo: Optional[bool] = Field(None, description="only false")
    best_of: Optional[int] = Field(None, description="only 1")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(BaseModel):
    error: ErrorBody


MODELS = {"CompletionRequest": CompletionRequest, "ChatCompletionRequest": ChatCompletionRequest}
ERRORS = {400: "invalid request", 401: "no or wrong API key", 413: "body too large",
          429: "at capacity (Retry-After)", 500: "engine or server error", 503: "shutting down (Retry-After)"}


def _inline(schema: dict) -> dict:
    """The schema with every #/$defs/X reference replaced by its definition (the models are not recursive)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


def openapi_body(name: str, served: Sequence[str], max_model_len: int, max_num_seqs: int, max_prompts: int,
                 vocab_size: int) -> dict:
    """A route's openapi_extra: its request body and its responses."""
    schema = _inline(MODELS[name].model_json_schema())

    def bound_ids(node):  # token ids: below the vocabulary size
        if isinstance(node, dict):
            if node.get("type") == "integer" and node.get("minimum") == 0 and "maximum" not in node:
                node["maximum"] = vocab_size - 1
            for v in node.values():
                bound_ids(v)
        elif isinstance(node, list):
            for v in node:
                bound_ids(v)
    props = schema["properties"]
    props["model"] = {"type": "string", "enum": list(served)}
    for field in ("max_tokens", "max_completion_tokens"):
        if field in props:
            props[field]["anyOf"][0]["maximum"] = max_model_len
    props["n"]["anyOf"][0]["maximum"] = max_num_seqs
    if "prompt" in props:
        props["prompt"]["anyOf"][2]["maxItems"] = max_prompts
        bound_ids(props["prompt"])
    error = _inline(ErrorResponse.model_json_schema())
    responses = {"200": {"description": "the completion (JSON), or server-sent events when streaming",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     # each server-sent event ({"data": a JSON chunk or [DONE]}), as SSE-aware
                                     # validators (schemathesis) check them one by one
                                     "text/event-stream": {"schema": {"type": "object", "properties": {
                                         "data": {"type": "string"}}}}}}}
    responses.update({str(code): {"description": what, "content": {"application/json": {"schema": error}}}
                      for code, what in ERRORS.items()})
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": responses}
