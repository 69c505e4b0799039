"""The OpenAI-compatible HTTP API (FastAPI): handlers validate, enqueue, and relay updates.

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the served model
    POST /v1/completions         prompt (text, ids, or a list of them), n, stream, logprobs (top N), echo, stop,
                                 sampling, penalties, logit_bias, min_tokens, ignore_eos
    POST /v1/chat/completions    messages rendered with the model's chat template; stream, n, logprobs, top_logprobs,
                                 the same sampling fields; tools, tool_choice, parallel_tool_calls (replies carry
                                 message.tool_calls, streamed as OpenAI's tool_calls deltas)
    GET  /metrics                Prometheus text format (infer/server/prom.py)

Handlers never touch the engine: they hand requests to the engine thread
(infer/server/async_engine.py) and read their updates from a queue. Streams are
server-sent events in the OpenAI chunk format, ending with `data: [DONE]`; `usage`
comes in every final response (a last chunk with no choices when streaming). A client
that goes away mid-request (streamed or not) has its request aborted, which frees its
pages; a finished request sends no abort.

What a client can do to the server is bounded (infer/server/limits.py, middleware.py): the
body size (413), the sequences accepted at once (429 / 503 with Retry-After), the prompts
per request, an API key (401); bodies are parsed, tokenized and rendered off the event
loop, so /health answers while a large prompt is tokenized. Every error is JSON in the
OpenAI shape; an unexpected one is a 500 whose request id is in the log beside the trace.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from typing import Callable, List, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from infer.engine import RequestError, RequestUpdate
from infer.server.async_engine import AsyncEngine, EngineFailure
from infer.server.limits import Admission, ServerLimits
from infer.server.middleware import ApiKey, BodyLimit
from infer.server.prom import ServerMetrics
from infer.server.protocol import (APIError, GenerationRequest, chat_logprobs, completion_logprobs, envelope,
                                   parse_body, parse_chat, parse_completion, usage)
from infer.server.schema import openapi_body
from infer.server.tool_calls import ToolCallStream, delta, finish_reason, parse_tool_calls
from infer.server.tool_request import ToolRequest, parse_tools

DISCONNECT_POLL_S = 0.25
OPEN_PATHS = ("/health",)
log = logging.getLogger("infer.server")


class _Stream(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends, even when its body was never started (a client
    gone before the first chunk), so the request's sequences are released and its engine requests aborted."""

    def __init__(self, *args, on_close: Callable[[], None], **kw):
        super().__init__(*args, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _Choice:
    def __init__(self):
        self.text, self.tokens, self.logprobs, self.finish_reason = "", [], [], None
        self.top = []  # per token [(id, log p)] (top_logprobs)


def create_app(engine: AsyncEngine, tokenizer, model_name: str, metrics: ServerMetrics,
               shutdown_timeout_s: float = 30.0, limits: Optional[ServerLimits] = None) -> FastAPI:
    limits = limits if limits is not None else ServerLimits()
    eng = engine.engine
    max_model_len, max_num_seqs, vocab = eng.max_model_len, eng.max_num_seqs, eng.cfg.vocab_size
    served = [model_name]
    created = int(time.time())
    admission = Admission(limits, running_capacity=max_num_seqs)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        admission.closing = True  # new requests get 503 while the ones in flight finish
        await asyncio.get_running_loop().run_in_executor(None, engine.stop, shutdown_timeout_s)

    app = FastAPI(title="infer", lifespan=lifespan)
    app.state.admission = admission
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if limits.api_key is not None:  # outermost: a request without the key is refused before its body is read
        app.add_middleware(ApiKey, key=limits.api_key,
                           open_paths=OPEN_PATHS + (() if limits.metrics_need_key else ("/metrics",)))

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(request, e: Exception):
        rid = uuid.uuid4().hex[:16]
        log.error("unexpected error, request id %s: %s %s", rid, request.method, request.url.path,
                  exc_info=(type(e), e, e.__traceback__))
        return JSONResponse(APIError(f"internal server error (request id {rid})", status=500, type="server_error",
                                     code="internal_error").body(), status_code=500)

    async def read_json(request: Request):
        raw = await request.body()
        return await anyio.to_thread.run_sync(parse_body, raw) if len(raw) > 65536 else parse_body(raw)

    def encode(text: str, field: str) -> List[int]:
        try:
            return list(tokenizer.encode(text))
        except Exception as e:  # text the tokenizer cannot take is the client's error, not ours
            raise APIError(f"'{field}': the tokenizer refused it: {type(e).__name__}: {e}"[:300], param=field,
                           code="invalid_value") from None

    def token_ids(prompt) -> List[int]:
        if isinstance(prompt, str):
            return encode(prompt, "prompt")
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

    def top_texts(top) -> Optional[list]:
        """Per token its [(text, log p)] most likely (None when the request asked for none)."""
        return None if top is None else [list(zip(token_texts([t for t, _ in alts]), [lp for _, lp in alts]))
                                         for alts in top]

    def logprobs_of(req: GenerationRequest, chat: bool, ids, lps, top, offset=0) -> dict:
        toks, top = token_texts(ids), top_texts(top if req.sampling.top_logprobs else None)
        return chat_logprobs(toks, lps, top) if chat else completion_logprobs(toks, lps, offset, top)

    def check_bias(req: GenerationRequest) -> None:
        bad = [t for t, _ in req.sampling.logit_bias if t >= vocab]
        if bad:
            raise APIError(f"'logit_bias': token id {bad[0]} is outside [0, {vocab})", param="logit_bias",
                           code="invalid_value")

    def echo_texts(req: GenerationRequest, prompts: List[List[int]]) -> List[str]:
        """Per choice the text `echo` puts first: the prompt as sent, or its ids decoded."""
        if not req.echo:
            return [""] * (len(prompts) * req.n)
        text = lambda p, ids: p if isinstance(p, str) else ("".join(token_texts(ids)) if tokenizer is None
                                                             else tokenizer.decode(ids))
        return [text(p, ids) for p, ids in zip(req.prompts, prompts) for _ in range(req.n)]

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
                c.top += u.new_top_logprobs or []
                if u.finished:
                    c.finish_reason = u.finish_reason
                    left -= 1
        except BaseException:
            for rid in rids:  # only reached when not every sample finished
                engine.abort(rid)
            raise
        return choices

    async def sse(req: GenerationRequest, rids, counts, q, kind: str, rid_out: str, release: Callable[[], None],
                  echoes: List[str], tools: Optional[ToolRequest] = None):
        n, chat = req.n, kind == "chat.completion.chunk"
        parsers = ([ToolCallStream(tools.names, tools.forced) for _ in range(len(rids) * n)]
                   if tools and tools.parses else None)
        slot = {rid: i for i, rid in enumerate(rids)}
        total, done, completion_tokens = len(rids) * n, 0, 0
        offsets = [0] * total
        event = lambda d: f"data: {json.dumps(d, ensure_ascii=False)}\n\n"
        try:
            if chat:
                yield event(envelope(kind, rid_out, req.model, [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(total)], created=created))
            for i, text in enumerate(echoes if req.echo else []):
                yield event(envelope(kind, rid_out, req.model, [
                    {"index": i, "text": text, "logprobs": None, "finish_reason": None}], created=created))
                offsets[i] = len(text)
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
                    lp = logprobs_of(req, chat, u.new_token_ids, u.new_logprobs, u.new_top_logprobs, offsets[i])
                offsets[i] += len(u.new_text)
                reason = u.finish_reason if u.finished else None
                if parsers is not None:  # content and tool-call deltas, the finish reason on the last
                    p = parsers[i]
                    deltas = [delta(e) for e in p.feed(u.new_text) + (p.finish() if u.finished else [])] or [{}]
                    reason = finish_reason(reason, p.calls)
                    for k, d in enumerate(deltas):
                        last = k == len(deltas) - 1
                        if d or last or (k == 0 and lp is not None):
                            yield event(envelope(kind, rid_out, req.model, [{
                                "index": i, "delta": d, "logprobs": lp if k == 0 else None,
                                "finish_reason": reason if last else None}], created=created))
                    continue
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
            release()

    def admit(req: GenerationRequest) -> Callable[[], None]:
        """Count the request's sequences in (or refuse it: 429 / 503 / 400) before any work is spent on it;
        returns the release, which may be called any number of times."""
        sequences = len(req.prompts or [None]) * req.n
        admission.admit(sequences)
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                admission.release(sequences)
        return release

    async def admitted(request: Request, req: GenerationRequest, prepare: Callable[[], List[List[int]]], kind: str,
                       tools: Optional[ToolRequest] = None):
        """Admit, tokenize off the event loop, generate; the sequences are released when the response ends."""
        release = admit(req)
        try:
            prompts = await anyio.to_thread.run_sync(prepare)
            return await generate(request, req, prompts, kind, release, tools)
        except BaseException:
            release()
            raise

    async def generate(request: Request, req: GenerationRequest, prompts: List[List[int]], kind: str,
                       release: Callable[[], None], tools: Optional[ToolRequest] = None):
        rids, counts, q = await submit(req, prompts)
        echoes = echo_texts(req, prompts)
        rid_out = ("chatcmpl-" if kind.startswith("chat") else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            finished = []

            def on_close():
                if not finished:  # the body may never have started: its requests are still the engine's
                    for rid in rids:
                        engine.abort(rid)
                release()
            return _Stream(sse(req, rids, counts, q, kind + ".chunk" if kind.startswith("chat") else kind, rid_out,
                               lambda: finished.append(release()), echoes, tools), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                           on_close=on_close)
        try:
            choices = await collect(request, q, rids, req.n)
        except ConnectionAbortedError:
            return Response(status_code=499)
        finally:
            release()
        completion_tokens = sum(len(c.tokens) for c in choices)
        out = []
        for i, c in enumerate(choices):
            lp = None
            if req.logprobs:
                lp = logprobs_of(req, kind.startswith("chat"), c.tokens, c.logprobs, c.top)
            if kind.startswith("chat") and tools is not None and tools.parses:
                content, calls = parse_tool_calls(c.text, tools.names, tools.forced)
                message = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = [call.message() for call in calls]
                out.append({"index": i, "message": message, "logprobs": lp,
                            "finish_reason": finish_reason(c.finish_reason, calls)})
            elif kind.startswith("chat"):
                out.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason})
            else:
                out.append({"index": i, "text": echoes[i] + c.text, "logprobs": lp, "finish_reason": c.finish_reason})
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

    @app.post("/v1/completions", openapi_extra=openapi_body("CompletionRequest", served, max_model_len,
                                                            max_num_seqs, limits.max_prompts_per_request, vocab))
    async def completions(request: Request):
        req = parse_completion(await read_json(request), served, max_model_len, max_num_seqs,
                               limits.max_prompts_per_request)
        check_bias(req)
        if req.stop and tokenizer is None:
            raise APIError("'stop': stop strings need a tokenizer", param="stop", code="unsupported")
        if tokenizer is None and any(isinstance(p, str) for p in req.prompts):
            raise APIError("'prompt': this model has no tokenizer; send token ids", param="prompt")

        def prepare():  # tokenizing is the one part that grows with the body: off the event loop
            prompts = []
            for p in req.prompts:
                ids = token_ids(p)
                check_fits(ids, req.sampling.max_new_tokens, "prompt")
                prompts.append(ids)
            return prompts
        return await admitted(request, req, prepare, "text_completion")

    @app.post("/v1/chat/completions", openapi_extra=openapi_body("ChatCompletionRequest", served, max_model_len,
                                                                 max_num_seqs, limits.max_prompts_per_request,
                                                                 vocab))
    async def chat_completions(request: Request):
        body = await read_json(request)
        req, messages = parse_chat(body, served, max_model_len, max_num_seqs)
        tools = parse_tools(body)
        forced = tools.constraint if tools is not None else None
        if forced is not None:  # a forced call: the output is the call's grammar
            if req.sampling.constraint is not None:
                raise APIError("'tool_choice': a forced tool call ('required' or a named function) cannot be "
                               "combined with response_format or a guided_* field", param="tool_choice",
                               code="invalid_value")
            req.sampling = dataclasses.replace(req.sampling, constraint=forced)
        check_bias(req)
        template = getattr(tokenizer, "chat_template", None)
        if template is None:
            raise APIError("this model has no chat template; use /v1/completions", param="messages",
                           code="unsupported")

        eot = () if req.sampling.ignore_eos else template.end_of_turn_ids(tokenizer)
        req.sampling = dataclasses.replace(req.sampling, stop_token_ids=tuple(
            dict.fromkeys(req.sampling.stop_token_ids + eot)))

        def render():  # the template and the tokenizer, off the event loop
            try:
                ids = template.encode(tokenizer, messages, add_generation_prompt=True,
                                      tools=tools.prompt_tools if tools is not None else None)
            except Exception as e:
                raise APIError(f"'messages': the chat template refused them: {e}"[:300], param="messages") from None
            check_fits(ids, req.sampling.max_new_tokens, "messages")
            return [ids]
        return await admitted(request, req, render, "chat.completion", tools)

    return app
