"""A model's chat template, rendered as transformers' `apply_chat_template` renders it.

    tmpl = load_chat_template("smollm2-135m-instruct")   # GGUF metadata, or tokenizer_config.json / chat_template.jinja
    text = tmpl.render([{"role": "user", "content": "Hi"}])          # add_generation_prompt=True
    ids = tmpl.encode(tokenizer, messages)                          # no special tokens added by the tokenizer
    stops = tmpl.end_of_turn_ids(tokenizer)                         # e.g. <|im_end|> and EOS

Rendering matches transformers (`utils/chat_template_utils.py`): a Jinja2
`ImmutableSandboxedEnvironment` with trim_blocks and lstrip_blocks, the
loopcontrols extension, a `{% generation %}` block that renders its body,
`raise_exception`, `strftime_now`, `namespace`, a `tojson` that does not
HTML-escape, the tokenizer's named special tokens (bos_token, eos_token,
unk_token, pad_token) as variables, and message keys whose value is None
dropped.

Tools (`render(messages, tools=[...])`, OpenAI's function definitions): a template that
refers to `tools` gets them, and the messages' `tool_calls` and `tool` messages, as
transformers hands them over. One that does not (SmolLM2's) would drop them silently, so
the conversation is rewritten first (infer/io/tool_prompt.py): a system prompt listing the
tools and asking for Hermes-style `<tool_call>` JSON, earlier calls and results as text
(unless the template mentions "tool" at all: then it handles, or refuses, those itself).

BOS twice is a known bug class: templates write BOS themselves, so, like
transformers, the rendered chat is encoded with `add_special_tokens=False` and
the tokenizer adds nothing.
"""
import dataclasses
import functools
import json
import os
from datetime import datetime
from typing import Dict, List, Optional, Sequence

from infer.io.tool_prompt import fallback_messages

# Tokens that end an assistant turn in common templates; used when they occur in the template's text.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplateError(ValueError):
    """A model has no usable chat template, or rendering failed; the message names the source."""


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    """The template compiled in transformers' sandboxed environment."""
    return _environment().from_string(template)


@functools.lru_cache(maxsize=8)
def _knows_tools(template: str) -> bool:
    """Whether the template reads a `tools` variable (else it would ignore the tools it is given)."""
    from jinja2 import meta
    return "tools" in meta.find_undeclared_variables(_environment().parse(template))


@functools.lru_cache(maxsize=1)
def _environment():
    """transformers' sandboxed environment for chat templates."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = jinja2.utils.Namespace
    return env


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the special-token strings it may refer to."""

    template: str
    special_tokens: Dict[str, str]  # bos_token, eos_token, ... -> token text (only those the tokenizer has)
    source: str  # where the template came from (for error messages)

    @property
    def knows_tools(self) -> bool:
        """The template renders `tools` itself (else `render` writes them as infer/io/tool_prompt.py says)."""
        return _knows_tools(self.template)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True,
               tools: Optional[Sequence[dict]] = None, **kwargs) -> str:
        """The conversation as the model's prompt text (kwargs reach the template, overriding special tokens).
        tools: OpenAI's function definitions, or None."""
        if not messages:
            raise ChatTemplateError(f"{self.source}: cannot render an empty conversation")
        msgs = []
        for m in messages:
            if not isinstance(m, dict):
                raise ChatTemplateError(f"{self.source}: chat messages must be dicts, got {m!r}")
            msgs.append({k: v for k, v in m.items() if v is not None})
        tools = list(tools) if tools else None
        uses_tools = tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in msgs)
        if uses_tools and not self.knows_tools:  # calls and results as text unless the template handles them
            msgs, tools = fallback_messages(msgs, tools, calls_as_text="tool" not in self.template), None
        import jinja2
        try:
            return _compile(self.template).render(messages=msgs, tools=tools, documents=None,
                                                  add_generation_prompt=add_generation_prompt,
                                                  **{**self.special_tokens, **kwargs})
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"{self.source}: chat template: {e}") from None

    def encode(self, tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True,
               tools: Optional[Sequence[dict]] = None) -> List[int]:
        """Token ids of the rendered conversation; the tokenizer adds no special tokens (the template has them)."""
        return tokenizer.encode(self.render(messages, add_generation_prompt, tools=tools), add_special_tokens=False)

    def end_of_turn_ids(self, tokenizer) -> tuple:
        """Ids that end an assistant turn: the tokenizer's EOS ids plus known end-of-turn tokens in the template."""
        ids = list(tokenizer.eos_ids)
        for t in END_OF_TURN_TOKENS:
            i = tokenizer.token_to_id(t) if t in self.template else None
            if i is not None:
                ids.append(i)
        return tuple(dict.fromkeys(ids))


def _token_text(v) -> Optional[str]:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def gguf_chat_template(reader) -> Optional[ChatTemplate]:
    """The chat template in an open GGUF reader's metadata (None when 'tokenizer.chat_template' is missing)."""
    from infer.io.gguf_loader import metadata_string_item, metadata_value
    template = metadata_value(reader, "tokenizer.chat_template", None)
    if template is None:
        return None
    special = {}
    for name, key in zip(SPECIAL_TOKEN_NAMES, ("bos_token_id", "eos_token_id", "unknown_token_id",
                                               "padding_token_id")):
        i = metadata_value(reader, f"tokenizer.ggml.{key}", None)
        if i is not None:
            special[name] = metadata_string_item(reader, "tokenizer.ggml.tokens", int(i))
    return ChatTemplate(template=template, special_tokens=special, source=reader.data.filename)


def _from_hf_dir(path: str) -> ChatTemplate:
    cfg_file = os.path.join(path, "tokenizer_config.json")
    cfg = {}
    if os.path.exists(cfg_file):
        with open(cfg_file) as f:
            cfg = json.load(f)
    template, source = cfg.get("chat_template"), cfg_file
    jinja_file = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(jinja_file):  # transformers >= 4.49 saves it beside the config
        with open(jinja_file) as f:
            template, source = f.read(), jinja_file
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        raise ChatTemplateError(f"{path}: no chat template (neither tokenizer_config.json 'chat_template' nor "
                                f"chat_template.jinja)")
    special = {n: _token_text(cfg.get(n)) for n in SPECIAL_TOKEN_NAMES}
    return ChatTemplate(template=template, special_tokens={k: v for k, v in special.items() if v is not None},
                        source=source)


def load_chat_template(path: str) -> ChatTemplate:
    """The chat template of a checkpoint: GGUF metadata (a .gguf, a dir holding one, a model name) or HF files."""
    from infer.io.model_names import resolve_gguf
    gguf_path = resolve_gguf(path)
    if gguf_path is None:
        return _from_hf_dir(os.fspath(path))
    from infer.io.gguf_loader import open_gguf
    template = gguf_chat_template(open_gguf(gguf_path))
    if template is None:
        raise ChatTemplateError(f"{gguf_path}: no chat template (metadata key 'tokenizer.chat_template' is missing)")
    return template
