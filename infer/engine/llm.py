"""Offline batches through the engine: a model name or directory in, completions out in input order.

    llm = infer.LLM("smollm2-135m-instruct", max_num_seqs=16)
    outs = llm.generate(["def fib(n):", "The capital of France is"], infer.SamplingParams(max_new_tokens=32))
    llm = infer.LLM("smollm2-135m-instruct", speculative="ngram", num_speculative_tokens=4)  # prompt lookup
    outs[0].text, outs[0].token_ids, outs[0].finish_reason, outs[0].metrics.ttft_s
    replies = llm.chat([[{"role": "user", "content": "Hi!"}]])

All prompts go into one Engine (continuous batching, prefix caching, chunked prefill),
which runs them with a progress bar; each result is a RequestOutput (infer/engine/request.py).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Union

from infer.config import ModelConfig, SamplingParams, as_per_request
from infer.engine.data_parallel import make_engine
from infer.engine.request import RequestOutput
from infer.parallel.tensor_parallel import make_mesh

Prompt = Union[str, Sequence[int]]


class LLM:
    def __init__(self, model: str, *, dtype=None, tokenizer=None, **engine_options):
        """Load a checkpoint (ours, Hugging Face, GGUF or a model name) and its tokenizer; engine_options go to
        Engine (num_pages, page_size, max_num_seqs, max_num_batched_tokens, max_model_len, mesh, ...);
        tensor_parallel_size=n runs it tensor-parallel over n devices, data_parallel_size=m as m replicas;
        speculative="ngram" (or a SpeculativeConfig) and num_speculative_tokens=k: speculative decoding in the
        engine (infer/engine/speculation.py)."""
        from infer.io.checkpoint import load_model_dir
        from infer.io.tokenizer import load_tokenizer
        cfg, params = load_model_dir(model, dtype=dtype)
        tok = tokenizer if tokenizer is not None else load_tokenizer(model, vocab_size=cfg.vocab_size)
        self._init(params, cfg, tok, engine_options)

    @classmethod
    def from_params(cls, params, cfg: ModelConfig, tokenizer=None, **engine_options) -> "LLM":
        llm = cls.__new__(cls)
        llm._init(params, cfg, tokenizer, engine_options)
        return llm

    def _init(self, params, cfg, tokenizer, engine_options):
        tp = engine_options.pop("tensor_parallel_size", 1)
        dp = engine_options.pop("data_parallel_size", 1)
        if (tp, dp) != (1, 1):  # vLLM's switches: tp devices per replica, dp replicas
            if engine_options.get("mesh") is not None:
                raise ValueError("tensor_parallel_size / data_parallel_size: give them or a mesh, not both")
            engine_options["mesh"] = make_mesh(tp, dp)
        self.params, self.cfg, self.tokenizer = params, cfg, tokenizer
        self.engine = make_engine(params, cfg, tokenizer=tokenizer, **engine_options)

    def generate(self, prompts: Union[Prompt, Sequence[Prompt]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True) -> List[RequestOutput]:
        """Complete every prompt (text, or token ids); one SamplingParams shared or one per prompt.

        All requests are checked before any runs: a bad one raises RequestError naming it (its index) and
        nothing is left queued."""
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]
        per = as_per_request(sampling_params if sampling_params is not None else SamplingParams(), len(prompts))
        return self._run(list(prompts), list(per), use_tqdm)

    def chat(self, conversations: Sequence[Sequence[dict]],
             sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
             use_tqdm: bool = True) -> List[RequestOutput]:
        """The assistant's reply to each conversation ([{"role", "content"}, ...]) with the model's chat
        template (rendered as transformers does); each stops at the template's end-of-turn tokens."""
        from infer.io.chat_template import ChatTemplateError
        template = getattr(self.tokenizer, "chat_template", None)
        if template is None:
            raise ChatTemplateError("this model's tokenizer has no chat template")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        per = as_per_request(sampling_params if sampling_params is not None else SamplingParams(),
                             len(conversations))
        eot = template.end_of_turn_ids(self.tokenizer)
        prompts = [template.encode(self.tokenizer, c) for c in conversations]
        per = [dataclasses.replace(p, stop_token_ids=tuple(dict.fromkeys(p.stop_token_ids + eot))) for p in per]
        return self._run(prompts, per, use_tqdm)

    def _run(self, prompts, per, use_tqdm) -> List[RequestOutput]:
        eng = self.engine
        ids = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, per)):
                ids.append(eng.add_request(p, sp, request_id=f"llm-{id(self)}-{i}"))
        except Exception:
            for rid in ids:
                eng.abort(rid)
            eng.step()  # drain the abort updates
            raise
        order = {rid: i for i, rid in enumerate(ids)}
        outs: List[Optional[RequestOutput]] = [None] * len(ids)
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="requests", unit="req")
        try:
            while any(o is None for o in outs):
                for u in eng.step():
                    if u.output is not None and u.request_id in order:
                        outs[order[u.request_id]] = u.output
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(running=len(eng.scheduler.running), waiting=len(eng.scheduler.waiting))
        except BaseException:
            for rid in ids:
                eng.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return outs
