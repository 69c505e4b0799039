"""Tool calling in /v1/chat/completions: `tools`, `tool_choice`, tool messages, `message.tool_calls`, streamed deltas.

Checked by things independent of the server: the `openai` client's typed responses and its stream chunks, the
`jsonschema` validator on every forced call's arguments, `json.loads`; the parser on fixed model outputs (and the
same text streamed in random pieces, which must give what the whole text gives); the chat template's rendering
against the fallback prompt text. The server is SmolLM2-135M-Instruct with tests/test_server.py's engine shapes
(nothing new to compile when both run in one process).
"""
import asyncio
import json
import random

import httpx
import jsonschema
import openai
import pytest

from infer.io.chat_template import ChatTemplate, ChatTemplateError
from infer.io.tool_prompt import tools_prompt
from infer.server.serve import build_app
from infer.server.tool_calls import ToolCallStream, parse_tool_calls
from conftest import serving, smollm2_group

pytestmark = smollm2_group
NAME = "smollm2-135m-instruct"
MAX_LEN = 512

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"$defs": {"small": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                   "type": "object", "properties": {"a": {"$ref": "#/$defs/small"}, "b": {"$ref": "#/$defs/small"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMA = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


# ---- the parser, on fixed model outputs ---------------------------------------------------------------------------
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
CASES = [  # (model output, content, [(name, arguments)])
    ("Hello there.", "Hello there.", []),
    (CALL, None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("Let me check. " + CALL, "Let me check.", [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    (CALL + "\n" + '<tool_call>{"name":"add","arguments":{"a":1,"b":2}}</tool_call>', None,
     [("get_weather", {"city": "Paris", "unit": "celsius"}), ("add", {"a": 1, "b": 2})]),
    ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>', None,  # arguments as text
     [("add", {"a": 1, "b": 2})]),
    ('<tool_call>{"name": "add"}</tool_call>', None, [("add", {})]),
    # malformed blocks stay as content, as written
    ('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>', '<tool_call>{"name": "add", "arguments": {"a": 1'
                                                                    '</tool_call>', []),
    ("<tool_call>not json</tool_call> ok", "<tool_call>not json</tool_call> ok", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',
     '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', []),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', '<tool_call>{"name": "rm_rf", "arguments": {}}'
                                                                 '</tool_call>', []),  # not a tool of the request
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', '<tool_call>{"name": "add", "arguments": '
                                                                  '{"a": 1, "b": 2}}', []),  # never closed
    ("A <tool_call>[1]</tool_call> B " + CALL + " C", "A <tool_call>[1]</tool_call> B  C",
     [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("The tag <tool_ is cut", "The tag <tool_ is cut", []),
    ("ends with <tool_", "ends with <tool_", []),
    # Llama 3.1's JSON: the whole output, naming a tool
    ('{"name": "add", "parameters": {"a": 3, "b": 4}}', None, [("add", {"a": 3, "b": 4})]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}', None,
     [("get_weather", {"city": "Oslo", "unit": "celsius"})]),
    ('{"answer": 42}', '{"answer": 42}', []),  # a JSON answer, not a call
    ('{"name": "add", "parameters": {"a": 3, "b": 4}} and more', '{"name": "add", "parameters": {"a": 3, "b": 4}} '
                                                                 'and more', []),
    ("  \n", None, []),
]


@pytest.mark.parametrize("text,content,calls", CASES)
def test_the_parser_on_fixed_outputs_whole_and_streamed(text, content, calls):
    got_content, got = parse_tool_calls(text, names=SCHEMA)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert len({c.id for c in got}) == len(got) and all(c.id.startswith("call_") for c in got)
    for seed in range(12):  # the same text in random pieces: the same content and calls, as OpenAI's deltas
        s, events = ToolCallStream(SCHEMA), []
        for piece in pieces(text, seed):
            events += s.feed(piece)
        events += s.finish()
        assert ("".join(e for e in events if isinstance(e, str)) or None) == content
        deltas = [e for e in events if isinstance(e, dict)]
        assert [d["index"] for d in deltas] == [k for k in range(len(calls)) for _ in (0, 1)]
        starts, args = deltas[0::2], deltas[1::2]
        assert [(d["function"]["name"], d["type"]) for d in starts] == [(n, "function") for n, _ in calls]
        assert [json.loads(d["function"]["arguments"]) for d in args] == [a for _, a in calls]


def pieces(text, seed, most=7):
    rng, i = random.Random(seed), 0
    while i < len(text):
        j = i + rng.randint(1, most)
        yield text[i:j]
        i = j


FORCED = '<tool_call>\n{"name":"add","arguments":{"a":1,"b":{"c":"}"}}}\n</tool_call>'


@pytest.mark.parametrize("text,content,calls", [
    (FORCED, None, [("add", '{"a":1,"b":{"c":"}"}}')]),
    (FORCED + "\n" + FORCED.replace('"a":1', '"a":2'), None,
     [("add", '{"a":1,"b":{"c":"}"}}'), ("add", '{"a":2,"b":{"c":"}"}}')]),
    (FORCED[:-len("}}\n</tool_call>")], None, [("add", '{"a":1,"b":{"c":"}"}')]),  # cut off: as far as it got
    (FORCED[:-len("</tool_call>")], None, [("add", '{"a":1,"b":{"c":"}"}}}\n')]),  # the close tag cut: taken as is
    (FORCED[:45], None, [("add", '{"a":1,')]),
    (FORCED[:26], '<tool_call>\n{"name":"add",', []),  # cut before the arguments: no call yet
])
def test_a_forced_reply_streams_each_calls_arguments_as_they_are_written(text, content, calls):
    got_content, got = parse_tool_calls(text, names=SCHEMA, forced=True)
    assert got_content == content and [(c.name, c.arguments) for c in got] == calls
    for seed in range(12):
        s, events = ToolCallStream(SCHEMA, forced=True), []
        for piece in pieces(text, seed, most=4):
            events += s.feed(piece)
        events += s.finish()
        assert ("".join(e for e in events if isinstance(e, str)) or None) == content
        deltas = [e for e in events if isinstance(e, dict)]
        for k, (name, arguments) in enumerate(calls):
            mine = [d for d in deltas if d["index"] == k]
            assert mine[0]["id"].startswith("call_") and mine[0]["function"] == {"name": name, "arguments": ""}
            assert "".join(d["function"]["arguments"] for d in mine[1:]) == arguments
            assert len(mine) > 2 or len(arguments) <= 4  # in pieces, as the text came
        assert [(c.name, c.arguments) for c in s.calls] == calls


# ---- the prompt ---------------------------------------------------------------------------------------------------
def test_a_template_without_tools_gets_the_fallback_prompt_and_one_with_tools_gets_them(smollm2):
    tmpl = smollm2[2].chat_template
    assert not tmpl.knows_tools
    conv = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]
    text = tmpl.render(conv, tools=TOOLS)
    want = ("<|im_start|>system\n" + tools_prompt(TOOLS) + "<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n" + CALL + "<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n")
    assert text == want
    assert json.dumps(WEATHER) in text and '{"name": <function-name>, "arguments": <args-json-object>}' in text
    # a system message of the conversation's own comes first, the tools after it
    text = tmpl.render([{"role": "system", "content": "Be brief."}, conv[0]], tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    # one that mentions "tool" handles (here: refuses) tool results itself; it still gets the tools prompt
    refuses = ChatTemplate("{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tool role') }}"
                           "{% endif %}{{ m.role }}:{{ m.content }};{% endfor %}", {}, "test")
    assert refuses.render(conv[:1], tools=TOOLS) == "system:" + tools_prompt(TOOLS) + ";user:Weather in Paris?;"
    with pytest.raises(ChatTemplateError, match="no tool role"):
        refuses.render(conv, tools=TOOLS)
    # a template that reads `tools` gets them and the messages untouched (as transformers hands them over)
    own = ChatTemplate("{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
                       "{{ m.role }}:{{ m.content }}{% for c in m.tool_calls or [] %}{{ c.function.arguments.city }}"
                       "{% endfor %};{% endfor %}", {}, "test")
    assert own.knows_tools
    assert own.render(conv, tools=TOOLS) == "[get_weather][add]user:Weather in Paris?;assistant:Paris;tool:18 C;tool:sunny;"


QWEN_LIKE = (  # Qwen2.5's way with tools, shortened: tools as JSON lines, calls from their arguments, tool results
    "{% if tools %}<|system|>Tools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|tool|>{{ m.content }}\n"
    "{% elif m.role == 'assistant' and m.tool_calls %}<|assistant|>{{ m.content or '' }}{% for c in m.tool_calls %}"
    "<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}\n{% else %}<|{{ m.role }}|>{{ m.content }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_that_reads_tools_renders_as_transformers_does(tmp_path):
    """transformers' apply_chat_template with tools= is the reference for a template that reads them."""
    import tokenizer_fixtures as tf
    from transformers import AutoTokenizer

    from infer.io.chat_template import load_chat_template
    d = str(tmp_path)
    tf.byte_level_bpe(d)
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"eos_token": "</s>", "chat_template": QWEN_LIKE}, f)
    ref, ours = AutoTokenizer.from_pretrained(d), load_chat_template(d)
    assert ours.knows_tools
    conv = ASK + [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    for msgs, tools in [(conv, TOOLS), (conv, None), (ASK, TOOLS)]:
        want = ref.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False)
        assert ours.render(msgs, tools=tools) == want
        assert ("Tools:" + json.dumps(WEATHER) in want) == bool(tools)  # (trim_blocks ate the newline)
        assert ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"' in want) == (msgs is conv)


# ---- the server ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(smollm2):
    import uvicorn
    cfg, params, tok = smollm2
    app, engine = build_app(params, cfg, tok, NAME, num_pages=160, page_size=16, max_num_seqs=16,
                            max_num_batched_tokens=64, max_model_len=MAX_LEN)  # tests/test_server.py's shapes
    with serving(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"), engine) as port:
        yield f"http://127.0.0.1:{port}"


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


ASK = [{"role": "user", "content": "What is the weather like in Paris, in celsius?"}]
ASK_ADD = [{"role": "user", "content": "What is 2 + 3?"}]


def named(fn):
    return dict(messages=ASK if fn == "get_weather" else ASK_ADD, tools=TOOLS, max_tokens=64, temperature=0,
                tool_choice={"type": "function", "function": {"name": fn}})


REQUIRED = [dict(messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96, temperature=t, seed=seed, n=n,
                 parallel_tool_calls=False) for t, seed, n in [(0, 0, 1), (1.0, 1, 2)]]


async def reassembled(c, **kw):
    """A streamed reply put together as a client does: content, per index id / name / arguments, finish reasons."""
    content, calls, reasons = "", {}, []
    async for ch in await c.chat.completions.create(model=NAME, stream=True, **kw):
        for choice in ch.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": "", "pieces": 0})
                call["id"] = d.id or call["id"]
                if d.function is not None:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
                    call["pieces"] += bool(d.function.arguments)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return content, [calls[k] for k in sorted(calls)], reasons


@pytest.fixture(scope="module")
def replies(server):
    """Every generating request of the tests below: a named call alone first (it compiles, and leaves the tools
    prompt in the prefix cache), then the rest at once (one batch: the engine's continuous batching is exact,
    tests/test_server.py), among them a conversation that answers the first call."""
    c = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    one = lambda kw: c.chat.completions.create(model=NAME, **kw)

    async def rounds():
        fns = ["get_weather", "add"]
        warm = await one(named(fns[0]))
        msg = warm.choices[0].message
        conv = ASK + [msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": msg.tool_calls[0].id,
                                                           "content": json.dumps({"temperature": 18})}]
        auto = dict(messages=conv, tools=TOOLS, max_tokens=24, temperature=0)
        rest = await asyncio.gather(one(named(fns[1])), *[reassembled(c, **named(f)) for f in fns],
                                    *[one(kw) for kw in REQUIRED], one(auto), reassembled(c, **auto),
                                    one(dict(auto, tool_choice="none", max_tokens=8)))
        return {"named": dict(zip(fns, [warm, rest[0]])), "named_streamed": dict(zip(fns, rest[1:3])),
                "required": rest[3:3 + len(REQUIRED)], "auto": rest[-3], "auto_streamed": rest[-2], "none": rest[-1]}
    return asyncio.run(rounds())


def check_calls(calls, names):
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_") and c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMA[c.function.name])


@pytest.mark.parametrize("fn", ["get_weather", "add"])
def test_a_named_call_validates_streamed_and_not(replies, fn):
    (choice,) = replies["named"][fn].choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == fn
    check_calls([call], {fn})
    content, calls, reasons = replies["named_streamed"][fn]
    assert content == "" and reasons == ["tool_calls"]
    (s,) = calls
    assert s["id"].startswith("call_") and s["name"] == fn
    assert s["arguments"] == call.function.arguments  # greedy: the same call, as the model wrote it
    assert s["pieces"] > 1  # forced: the arguments stream as the tokens come


def test_required_with_two_tools_greedy_and_sampled(replies):
    for r, kw in zip(replies["required"], REQUIRED):
        assert sorted(c.index for c in r.choices) == list(range(kw["n"]))  # n samples: each parsed on its own
        for choice in r.choices:
            assert choice.finish_reason == "tool_calls", choice
            assert len(choice.message.tool_calls) == 1  # parallel_tool_calls false: exactly one
            check_calls(choice.message.tool_calls, {"get_weather", "add"})


def test_a_round_trip_with_the_tool_result(replies):
    (choice,) = replies["auto"].choices  # auto: whatever the model does, the reply is text or calls that parse
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    check_calls(choice.message.tool_calls or [], {"get_weather", "add"})
    content, calls, reasons = replies["auto_streamed"]
    assert (content or None) == choice.message.content and reasons == [choice.finish_reason]
    assert [(x["name"], json.loads(x["arguments"])) for x in calls] == [
        (t.function.name, json.loads(t.function.arguments)) for t in choice.message.tool_calls or []]
    (none,) = replies["none"].choices  # "none": the tools are not shown, nothing is parsed
    assert none.message.tool_calls is None and none.finish_reason in ("stop", "length") and none.message.content


BAD = [  # (what the request adds, the field the 400 names)
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tool_choice={"type": "function", "function": {"name": "add"}}), "tool_choice"),
    (dict(tools=TOOLS, tool_choice="always"), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]),
     "tools[0].function.parameters"),
    (dict(tools=[WEATHER, {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": 5}}}]), "tools[1].function.parameters"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), "tools[0].function.parameters"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
     "tools[0].function.parameters"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": "add"}), "tool_choice"),
    (dict(tools=[{"type": "retrieval"}]), "tools[0]"),
    (dict(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name"),
    (dict(tools=[ADD, ADD]), "tools[1].function.name"),
    (dict(tools="add"), "tools"),
    (dict(tools=TOOLS, parallel_tool_calls="yes"), "parallel_tool_calls"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
    (dict(messages=ASK + [{"role": "tool", "content": "18 C"}]), "messages[1].tool_call_id"),
    (dict(messages=ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": "{not json"}}]}]), "messages[1].tool_calls[0].function.arguments"),
    (dict(messages=ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]),
     "messages[1].tool_calls[0]"),
    (dict(messages=ASK + [{"role": "assistant", "tool_calls": []}]), "messages[1].tool_calls"),
]


@pytest.mark.parametrize("extra,field", BAD, ids=[f for _, f in BAD])
def test_bad_tool_fields_are_400s_naming_the_field(server, extra, field):
    body = {"model": NAME, "messages": ASK, "max_tokens": 4, **extra}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field.split(".")[0].split("[")[0] in err["message"], err
    with pytest.raises(openai.BadRequestError):  # the client sees it as OpenAI's 400
        client(server).chat.completions.create(**body)

