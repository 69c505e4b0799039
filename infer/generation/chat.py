"""Chat: a conversation rendered with the model's chat template, the assistant's reply generated.

    cfg, params = infer.load_model_dir("smollm2-135m-instruct")
    tok = infer.load_tokenizer("smollm2-135m-instruct")      # a GGUF tokenizer carries its chat template
    reply = infer.chat(params, cfg, tok, [{"role": "user", "content": "What is 2+2?"}],
                       infer.SamplingParams(max_new_tokens=64))

    session = ChatSession(params, cfg, tok, system="Be brief.")
    for piece in session.send("Hello"):  # streamed; the reply joins the conversation
        print(piece, end="")

Generation stops on the template's end-of-turn token (e.g. `<|im_end|>`) and
the tokenizer's EOS. The rendered conversation is encoded without special
tokens added by the tokenizer (the template writes them; see
infer/io/chat_template.py). Each turn prefills the whole conversation again
(no cache is kept between turns): simple, and cheap at chat lengths.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence

from infer.config import ModelConfig, SamplingParams
from infer.generation.text import TextStream, generate_text
from infer.io.chat_template import ChatTemplate, ChatTemplateError


def _template_of(tokenizer, template: Optional[ChatTemplate]) -> ChatTemplate:
    template = template if template is not None else getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ChatTemplateError(f"tokenizer {getattr(tokenizer, 'path', tokenizer.kind)}: no chat template; pass "
                                f"template=infer.io.chat_template.load_chat_template(checkpoint)")
    return template


def _chat_sampling(sampling: SamplingParams, tokenizer, template: ChatTemplate) -> SamplingParams:
    stops = tuple(dict.fromkeys(tuple(sampling.stop_token_ids) + template.end_of_turn_ids(tokenizer)))
    return dataclasses.replace(sampling, stop_token_ids=stops)


def chat(params, cfg: ModelConfig, tokenizer, messages: Sequence[dict],
         sampling: SamplingParams = SamplingParams(), template: Optional[ChatTemplate] = None) -> str:
    """The assistant's reply to `messages` ([{"role", "content"}], ending with the user's turn)."""
    template = _template_of(tokenizer, template)
    prompt = template.render(messages, add_generation_prompt=True)
    return generate_text(params, cfg, tokenizer, prompt, _chat_sampling(sampling, tokenizer, template),
                         add_special_tokens=False).text


class ChatSession:
    """A conversation that keeps its messages; `send` streams the reply and appends both turns."""

    def __init__(self, params, cfg: ModelConfig, tokenizer, sampling: SamplingParams = SamplingParams(),
                 system: Optional[str] = None, template: Optional[ChatTemplate] = None):
        self.params, self.cfg = params, cfg
        self.template = _template_of(tokenizer, template)
        self.tokenizer = tokenizer
        self.sampling = _chat_sampling(sampling, tokenizer, self.template)
        self.messages: List[dict] = [] if system is None else [{"role": "system", "content": system}]
        self.last: Optional[TextStream] = None  # the latest turn's stream (its metrics and token ids)

    def send(self, text: str, warmup: bool = False) -> Iterator[str]:
        """Add a user turn and yield the reply's text as it is generated; the reply then joins the messages.

        warmup=True compiles this turn's shapes first, so `last.metrics()` excludes compilation.
        """
        self.messages.append({"role": "user", "content": text})
        prompt = self.template.render(self.messages, add_generation_prompt=True)
        turn = sum(m["role"] == "user" for m in self.messages) - 1
        sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + turn)  # fresh draws each turn
        self.last = TextStream(self.params, self.cfg, self.tokenizer, prompt, sampling, warmup=warmup,
                               add_special_tokens=False)  # the template writes them
        yield from self.last
        self.messages.append({"role": "assistant", "content": self.last.text})
