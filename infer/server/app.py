"""The OpenAI-compatible HTTP API (FastAPI): handlers validate, enqueue, and relay updates.

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the served model
    POST /v1/completions         prompt (text, ids, or a list of them), n, stream, logprobs, stop, sampling
    POST /v1/chat/completions    messages rendered with the model's chat template; stream, n, logprobs
    GET  /metrics                Prometheus text format (infer/server/prom.py)

Handlers never touch the engine: they hand requests to the engine thread
(infer/server/async_engine.py) and read their updates from a queue. Streams are
server-sent events in the OpenAI chunk format, ending with `data: [DONE]`; `usage`
comes in every final response (a last chunk with no choices when streaming). A client
that goes away mid-request (streamed or not) has its request aborted, which frees its
pages; a finished request sends no abort.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from typing import List

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from infer.engine import RequestError, RequestUpdate
from infer.server.async_engine import AsyncEngine, EngineFailure
from infer.server.prom import ServerMetrics
from infer.server.protocol import (APIError, GenerationRequest, chat_logprobs, completion_logprobs, envelope,
                                   parse_chat, parse_completion, usage)

DISCONNECT_POLL_S = 0.25


class _Choice:
    def __init__(self):
        self.text, self.tokens, self.logprobs, self.finish_reason = "", [], [], None


def create_app(engine: AsyncEngine, tokenizer, model_name: str, metrics: ServerMetrics,
               shutdown_timeout_s: float = 30.0) -> FastAPI:
    eng = engine.engine
    max_model_len, max_num_seqs, vocab = eng.max_model_len, eng.max_num_seqs, eng.cfg.vocab_size
    served = [model_name]
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop, shutdown_timeout_s)

    app = FastAPI(title="infer", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    async def read_json(request: Request):
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON: {e}"[:300], code="invalid_json") from None

    def token_ids(prompt) -> List[int]:
        if isinstance(prompt, str):
            return list(tokenizer.encode(prompt))
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(f"'prompt': token id {bad[0]} is outside [0, {vocab})", param="prompt",
                           code="invalid_value")
        return list(prompt)

    def check_fits(ids: List[int], max_tokens: int, field: str) -> None:
        if len(ids) >= max_model_len:
            raise APIError(f"'{field}': the prompt has {len(ids)} tokens; the context is {max_model_len} tokens "
                           f"(prompt + max_tokens must fit)", param=field, code="context_length_exceeded")
        if len(ids) + max_tokens > max_model_len:
            raise APIError(f"'max_tokens': {max_tokens} + the prompt's {len(ids)} tokens exceeds the context of "
                           f"{max_model_len} tokens", param="max_tokens", code="context_length_exceeded")

    async def submit(req: GenerationRequest, prompts: List[List[int]]):
        """Enqueue every prompt (all or none); returns (request ids, prompt token counts, the shared queue)."""
        q: asyncio.Queue = asyncio.Queue()
        rids, counts = [], []
        try:
            for ids in prompts:
                rid, n_prompt, _ = await engine.add(ids, req.sampling, n=req.n, stop=req.stop, out=q)
                rids.append(rid)
                counts.append(n_prompt)
        except RequestError as e:
            for rid in rids:
                engine.abort(rid)
            raise APIError(str(e), code="invalid_request") from None
        return rids, counts, q

    def token_texts(ids: List[int]) -> List[str]:
        if tokenizer is None:  # a model without a tokenizer: tokens are named by id (vLLM's convention)
            return [f"token_id:{t}" for t in ids]
        return [tokenizer.decode([t], skip_special_tokens=False) for t in ids]

    async def collect(request: Request, q: asyncio.Queue, rids: List[str], n: int) -> List[_Choice]:
        choices = [_Choice() for _ in range(len(rids) * n)]
        slot = {rid: i for i, rid in enumerate(rids)}
        left = len(choices)
        try:
            while left:
                try:
                    item = await asyncio.wait_for(q.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise ConnectionAbortedError from None
                    continue
                if isinstance(item, EngineFailure):
                    metrics.failed()
                    raise APIError(item.message, status=500, type="server_error", code="engine_error")
                u: RequestUpdate = item
                c = choices[slot[u.request_id] * n + u.index]
                c.text += u.new_text
                c.tokens += u.new_token_ids
                c.logprobs += u.new_logprobs
                if u.finished:
                    c.finish_reason = u.finish_reason
                    left -= 1
        except BaseException:
            for rid in rids:  # only reached when not every sample finished
                engine.abort(rid)
            raise
        return choices

    async def sse(req: GenerationRequest, rids, counts, q, kind: str, rid_out: str):
        n, chat = req.n, kind == "chat.completion.chunk"
        slot = {rid: i for i, rid in enumerate(rids)}
        total, done, completion_tokens = len(rids) * n, 0, 0
        offsets = [0] * total
        event = lambda d: f"data: {json.dumps(d, ensure_ascii=False)}\n\n"
        try:
            if chat:
                yield event(envelope(kind, rid_out, req.model, [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(total)], created=created))
            while done < total:
                item = await q.get()
                if isinstance(item, EngineFailure):
                    metrics.failed()
                    yield event({"error": {"message": item.message, "type": "server_error", "param": None,
                                           "code": "engine_error"}})
                    break
                u: RequestUpdate = item
                i = slot[u.request_id] * n + u.index
                completion_tokens += len(u.new_token_ids)
                if u.finished:
                    done += 1
                if not (u.new_text or u.finished or req.logprobs):
                    continue
                lp = None
                if req.logprobs and u.new_token_ids:
                    toks = token_texts(u.new_token_ids)
                    lp = chat_logprobs(toks, u.new_logprobs) if chat else completion_logprobs(toks, u.new_logprobs,
                                                                                               offsets[i])
                offsets[i] += len(u.new_text)
                reason = u.finish_reason if u.finished else None
                choice = ({"index": i, "delta": {"content": u.new_text} if u.new_text else {}, "logprobs": lp,
                           "finish_reason": reason} if chat else
                          {"index": i, "text": u.new_text, "logprobs": lp, "finish_reason": reason})
                yield event(envelope(kind, rid_out, req.model, [choice], created=created))
            else:
                if req.include_usage:
                    yield event(envelope(kind, rid_out, req.model, [], usage(sum(counts), completion_tokens),
                                         created=created))
            yield "data: [DONE]\n\n"
            done = total
        finally:
            if done < total:  # the client went away (or the engine failed): free its pages
                for rid in rids:
                    engine.abort(rid)

    async def generate(request: Request, req: GenerationRequest, prompts: List[List[int]], kind: str):
        rids, counts, q = await submit(req, prompts)
        rid_out = ("chatcmpl-" if kind.startswith("chat") else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            return StreamingResponse(sse(req, rids, counts, q, kind + ".chunk" if kind.startswith("chat")
                                         else kind, rid_out),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            choices = await collect(request, q, rids, req.n)
        except ConnectionAbortedError:
            return Response(status_code=499)
        completion_tokens = sum(len(c.tokens) for c in choices)
        out = []
        for i, c in enumerate(choices):
            lp = None
            if req.logprobs:
                toks = token_texts(c.tokens)
                lp = chat_logprobs(toks, c.logprobs) if kind.startswith("chat") else completion_logprobs(toks,
                                                                                                         c.logprobs)
            if kind.startswith("chat"):
                out.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason})
            else:
                out.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        return JSONResponse(envelope(kind, rid_out, req.model, out, usage(sum(counts), completion_tokens),
                                     created=created))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "infer",
                                            "max_model_len": max_model_len} for m in served]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_completion(await read_json(request), served, max_model_len, max_num_seqs)
        if req.stop and tokenizer is None:
            raise APIError("'stop': stop strings need a tokenizer", param="stop", code="unsupported")
        prompts = []
        for p in req.prompts:
            if isinstance(p, str) and tokenizer is None:
                raise APIError("'prompt': this model has no tokenizer; send token ids", param="prompt")
            ids = token_ids(p)
            check_fits(ids, req.sampling.max_new_tokens, "prompt")
            prompts.append(ids)
        return await generate(request, req, prompts, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req, messages = parse_chat(await read_json(request), served, max_model_len, max_num_seqs)
        template = getattr(tokenizer, "chat_template", None)
        if template is None:
            raise APIError("this model has no chat template; use /v1/completions", param="messages",
                           code="unsupported")
        try:
            ids = template.encode(tokenizer, messages, add_generation_prompt=True)
        except Exception as e:
            raise APIError(f"'messages': the chat template refused them: {e}"[:300], param="messages") from None
        check_fits(ids, req.sampling.max_new_tokens, "messages")
        eot = template.end_of_turn_ids(tokenizer)
        req.sampling = dataclasses.replace(req.sampling, stop_token_ids=tuple(
            dict.fromkeys(req.sampling.stop_token_ids + eot)))
        return await generate(request, req, [ids], "chat.completion")

    return app
