"""Structured outputs (SamplingParams.constraint): llguidance masks on the host, applied in the engine's jitted step.

Every output is checked by something independent of llguidance and of the engine: `json.loads` and the
`jsonschema` validator, `re.fullmatch`, numpy's bit unpacking, and the unconstrained requests of the same batch
run alone. A random byte-level model (fast to compile) covers the mechanics (no recompilation, speculation,
padded vocabulary rows); SmolLM2-135M-Instruct covers real schemas.
"""
import json
import re

import jax
import jax.numpy as jnp
import jsonschema
import numpy as np
import pytest
from conftest import make_cfg, serve_requests, smollm2_group

import infer
from infer.config import Constraint, SamplingParams
from infer.engine import Engine, SpeculativeConfig
from infer.engine.device_step import engine_step
from infer.io.tokenizer import ByteTokenizer
from infer.sampling.token_mask import apply_token_bitmask

pytestmark = smollm2_group


# ---- the device's mask against numpy ------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [100, 128])
def test_the_device_mask_equals_numpys_unpacking(V):
    rng = np.random.default_rng(0)
    S, W = 6, -(-V // 32)
    bitmask = rng.integers(-2 ** 31, 2 ** 31, size=(S, W), dtype=np.int64).astype(np.int32)
    bitmask[1] = -1  # an unconstrained row
    bitmask[2, :] = 0
    bitmask[2, 0] = 1 << 5  # one token allowed (id 5)
    bitmask[3, -1] |= np.int32(-2 ** 31)  # bit 31 of the last word (past V when V = 100: never read)
    logits = rng.normal(size=(S, V)).astype(np.float32)
    got = np.asarray(jax.jit(apply_token_bitmask)(jnp.asarray(logits), jnp.asarray(bitmask)))
    allowed = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little")[:, :V].astype(bool)
    np.testing.assert_array_equal(got, np.where(allowed, logits, -np.inf))
    assert np.isinf(got[2]).sum() == V - 1 and got[2, 5] == logits[2, 5]
    # every row all ones: the logits pass through untouched; a row allowing nothing is left as it is (a guard)
    ones = np.full((S, W), -1, np.int32)
    np.testing.assert_array_equal(np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(ones))), logits)
    ones[0] = 0
    np.testing.assert_array_equal(np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(ones))), logits)


# ---- the mechanics, on a random byte-level model ------------------------------------------------------------------
EOS = 257


@pytest.fixture(scope="module")
def byte_model():
    """A random model over bytes with a padded vocabulary: ids 256..263 have no bytes (EOS is 257)."""
    cfg = make_cfg(vocab_size=264, max_seq_len=128)
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(1)), ByteTokenizer(eos_ids=(EOS,))


# ---- the constraint as data ---------------------------------------------------------------------------------------
def test_constraints_compare_by_value_and_bad_ones_are_refused_by_name(byte_model):
    a = Constraint.json_schema({"type": "object", "properties": {"x": {"type": "integer"}}})
    b = Constraint.json_schema('{"properties": {"x": {"type": "integer"}}, "type": "object"}')
    assert a == b and hash(a) == hash(b) and SamplingParams(constraint=a) == SamplingParams(constraint=b)
    for make, words in [(lambda: Constraint.json_schema({"type": "nope"}), "json_schema"),
                        (lambda: Constraint.json_schema("{not json"), "not valid JSON"),
                        (lambda: Constraint.regex("[a-"), "regex"),
                        (lambda: Constraint.grammar("start: undefined_rule"), "grammar"),
                        (lambda: Constraint("xml", "<a/>"), "kind"),
                        (lambda: SamplingParams(constraint={"type": "json_object"}), "constraint")]:
        with pytest.raises(ValueError, match="constraint") as e:
            make()
        assert words in str(e.value)
    cfg, params, tok = byte_model
    with pytest.raises(ValueError, match="constraint"):  # generate's loop runs on the device: no host matcher
        infer.generate(params, cfg, [[1, 2]], SamplingParams(constraint=Constraint.regex("a")))
    with pytest.raises(infer.RequestError, match="tokenizer"):
        Engine(params, cfg, **BYTE_ENGINE).add_request([1, 2], SamplingParams(constraint=Constraint.regex("a")))


REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no|maybe)", r"[a-f]{2,6}x?", r"\(([0-9]|[1-9][0-9])\)"]


def byte_requests(n_plain=2):
    """Regex-constrained requests, greedy and sampled, and unconstrained ones (which speculate: repetitive)."""
    rng = np.random.default_rng(2)
    prompts, sps = [], []
    for i, rx in enumerate(REGEXES * 2):
        prompts.append(rng.integers(0, 256, size=int(rng.integers(3, 20))).tolist())
        sps.append(SamplingParams(temperature=0.0 if i < len(REGEXES) else 1.0, seed=i, max_new_tokens=12,
                                  constraint=Constraint.regex(rx)))
    for i in range(n_plain):
        prompts.append([7, 8, 9, 10] * (i + 3))
        sps.append(SamplingParams(temperature=0.0, max_new_tokens=12))
    return prompts, sps


def check_regex_outputs(outs, sps):
    for o, sp in zip(outs, sps):
        if sp.constraint is None:
            continue
        ids = o.token_ids[:-1] if o.token_ids[-1] == EOS else o.token_ids
        assert all(t < 256 for t in ids), ids  # padded vocabulary rows never win in a constrained row
        assert re.fullmatch(sp.constraint.spec, bytes(ids).decode()), (sp.constraint.spec, ids)
        assert o.finish_reason == "stop"


BYTE_ENGINE = dict(num_pages=64, page_size=4, max_num_seqs=4, max_num_batched_tokens=16, max_model_len=48)


def test_a_constrained_request_runs_the_unconstrained_program(byte_model):
    """Same shapes, same compiled program: the bitmask is always an input (all ones when nothing is constrained)."""
    cfg, params, tok = byte_model
    eng = Engine(params, cfg, tokenizer=tok, **BYTE_ENGINE)
    serve_requests(eng, [[5, 6, 7, 8, 9, 10]], SamplingParams(temperature=0.0, max_new_tokens=12))
    compiled = engine_step._cache_size()
    sps = [SamplingParams(temperature=t, max_new_tokens=12, constraint=Constraint.regex(r"[0-9]{3}-[0-9]{4}"))
           for t in (0.0, 1.0)]
    for i, sp in enumerate(sps):  # prompts of the same length (not a prefix-cache hit: the same prefill shape)
        check_regex_outputs(serve_requests(eng, [[20 + i, 6, 7, 8, 9, 10]], sp), [sp])
    assert engine_step._cache_size() == compiled


def test_a_mixed_batch_is_valid_and_its_unconstrained_rows_equal_them_alone(byte_model):
    cfg, params, tok = byte_model
    eng = Engine(params, cfg, tokenizer=tok, **BYTE_ENGINE)
    prompts, sps = byte_requests()
    outs = serve_requests(eng, prompts, sps, arrivals=[i // 2 for i in range(len(prompts))])
    check_regex_outputs(outs, sps)
    for p, sp, o in zip(prompts, sps, outs):
        if sp.constraint is None:
            assert o.token_ids == serve_requests(eng, [p], sp)[0].token_ids
    # n samples of one constrained prompt each follow their own matcher (forked at the prompt's end)
    (out,) = serve_requests(eng, [[1, 2, 3]], SamplingParams(temperature=1.0, max_new_tokens=12, seed=5,
                                                              constraint=Constraint.regex(REGEXES[2])), n=3)
    check_regex_outputs(out.outputs, [SamplingParams(constraint=Constraint.regex(REGEXES[2]))] * 3)


def test_constrained_requests_do_not_speculate_and_stay_valid_beside_speculating_ones(byte_model):
    cfg, params, tok = byte_model
    spec = SpeculativeConfig("ngram", k=3, max_batch=8, min_ngram=1, max_ngram=3)
    eng = Engine(params, cfg, tokenizer=tok, speculative=spec, **BYTE_ENGINE)
    # propose for every candidate (prompt lookup rarely matches a random model's text): only the engine's own
    # rule keeps the constrained sequences out
    eng.spec.proposer = type("Always", (), {"propose": lambda self, hs, ks: [[h[-1]] * k for h, k in zip(hs, ks)]})()
    drafted = []

    def no_constrained_drafts(engine):
        drafted.extend(s.seq_id for s in engine.scheduler.running if s.matcher is not None and s.draft)
    prompts, sps = byte_requests()
    outs = serve_requests(eng, prompts, sps, each_step=no_constrained_drafts)
    check_regex_outputs(outs, sps)
    assert not drafted and eng.stats()["spec_verify_runs"] > 0  # the others did verify proposals


# ---- SmolLM2: real schemas in one batch ---------------------------------------------------------------------------
ENGINE = dict(num_pages=160, page_size=16, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512)
NAME = {"type": "string", "minLength": 1, "maxLength": 12}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"city": NAME, "country": NAME}, "required": ["city", "country"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10,
                                                                    "maximum": 10}},
        "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                      "comment": {"type": "string", "maxLength": 20}}, "required": ["score"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1900, "maximum": 2030}},
     "required": ["title", "year"], "additionalProperties": False},
    {"$defs": {"pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "name": NAME},
                       "required": ["kind", "name"], "additionalProperties": False}},
     "type": "object", "properties": {"pet": {"$ref": "#/$defs/pet"}}, "required": ["pet"],
     "additionalProperties": False},
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {
        "type": "number", "minimum": 0, "maximum": 1}}, "required": ["answer"], "additionalProperties": False},
    {"type": "string", "enum": ["alpha", "beta", "gamma"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {
        "type": "integer", "minimum": 1, "maximum": 999}, "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}},
        "required": ["id", "email"], "additionalProperties": False}}, "required": ["user"],
     "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}}, "required": ["items"],
     "additionalProperties": False},
    {"type": "object", "properties": {"temperature": {"type": "integer", "minimum": -50, "maximum": 50},
                                      "unit": {"enum": ["C", "F"]}}, "required": ["temperature", "unit"],
     "additionalProperties": False},
    {"type": "object", "properties": {"first": NAME, "middle": NAME, "last": NAME}, "required": ["first", "last"],
     "additionalProperties": False},
    {"$defs": {"pair": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2,
                        "maxItems": 2}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/pair"}, "b": {"$ref": "#/$defs/pair"}},
     "required": ["a", "b"], "additionalProperties": False},
    {"type": "object", "properties": {"status": {"const": "done"}, "count": {"type": "integer", "minimum": 0,
                                                                            "maximum": 1000}},
     "required": ["status", "count"], "additionalProperties": False},
    {"type": "object", "properties": {"lang": {"enum": ["python", "rust", "go"]}, "stars": {
        "type": "integer", "minimum": 0, "maximum": 5}}, "required": ["lang", "stars"], "additionalProperties": False},
    {"type": "object", "properties": {"nested": {"type": "object", "properties": {"deeper": {
        "type": "object", "properties": {"value": {"type": "boolean"}}, "required": ["value"],
        "additionalProperties": False}}, "required": ["deeper"], "additionalProperties": False}},
     "required": ["nested"], "additionalProperties": False},
    {"type": "object", "properties": {"words": {"type": "array", "items": {"enum": ["up", "down"]},
                                                "maxItems": 3}}, "required": ["words"], "additionalProperties": False},
    {"type": "integer", "minimum": 10, "maximum": 20},
]
QUESTIONS = ["Describe a person.", "Name a place.", "Pick a color.", "Is water wet?", "Tag this: a cat video.",
             "Give a point on a grid.", "Rate this movie.", "List some numbers.", "Name a film.", "Describe a pet.",
             "Is the sky blue?", "Pick a Greek letter.", "Make up a user.", "Make up an order.", "Weather today?",
             "Make up a full name.", "Two pairs of digits.", "Report a finished job.", "A favorite language?",
             "Nested truth.", "Directions?", "A number between 10 and 20."]
REGEX_ASKS = [("Phone number?", r"[0-9]{3}-[0-9]{4}"), ("A date?", r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]")]
PLAIN = ["What is the capital of France?", "Write a haiku about the sea."]


def chat_ids(tok, question):
    return tok.chat_template.encode(tok, [{"role": "user", "content": question + " Answer in JSON."}],
                                    add_generation_prompt=True)


@pytest.fixture(scope="module")
def smol_batch(smollm2):
    """22 schemas (greedy, and the first 6 again at temperature 1), 2 regexes and 2 unconstrained chats: all added
    at once to one engine."""
    cfg, params, tok = smollm2
    eng = Engine(params, cfg, tokenizer=tok, **ENGINE)
    eot = tok.chat_template.end_of_turn_ids(tok)
    reqs = []
    for i, (schema, q) in enumerate(zip(SCHEMAS, QUESTIONS)):
        reqs.append((q, schema, SamplingParams(temperature=0.0, max_new_tokens=64, stop_token_ids=eot,
                                               constraint=Constraint.json_schema(schema))))
    for i, (schema, q) in enumerate(list(zip(SCHEMAS, QUESTIONS))[:6]):
        reqs.append((q, schema, SamplingParams(temperature=1.0, seed=i, max_new_tokens=64, stop_token_ids=eot,
                                               constraint=Constraint.json_schema(schema))))
    for q, rx in REGEX_ASKS:
        reqs.append((q, rx, SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=eot,
                                           constraint=Constraint.regex(rx))))
    for q in PLAIN:
        reqs.append((q, None, SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=eot)))
    outs = serve_requests(eng, [chat_ids(tok, q) for q, _, _ in reqs], [sp for _, _, sp in reqs])
    return eng, reqs, outs


def test_json_schemas_in_one_batch_parse_and_validate(smol_batch):
    _, reqs, outs = smol_batch
    n, bad = 0, []
    for (q, schema, sp), o in zip(reqs, outs):
        if sp.constraint is None or sp.constraint.kind != "json_schema":
            continue
        n += 1
        try:
            assert o.finish_reason == "stop", o.finish_reason
            jsonschema.validate(json.loads(o.text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            bad.append((q, o.text, str(e)[:200]))
    assert n >= 28 and not bad, bad


def test_regex_outputs_match_in_the_same_batch(smol_batch):
    _, reqs, outs = smol_batch
    for (q, rx, sp), o in zip(reqs, outs):
        if sp.constraint is not None and sp.constraint.kind == "regex":
            assert o.finish_reason == "stop" and re.fullmatch(rx, o.text), (rx, o.text)


def test_unconstrained_rows_of_the_batch_equal_the_same_requests_alone(smol_batch, smollm2):
    eng, reqs, outs = smol_batch
    tok = smollm2[2]
    for (q, _, sp), o in zip(reqs, outs):
        if sp.constraint is None:
            (alone,) = serve_requests(eng, [chat_ids(tok, q)], sp)
            assert o.token_ids == alone.token_ids and o.text, q


def test_llm_generate_and_chat_take_a_constraint(smol_batch, smollm2):
    cfg, params, tok = smollm2
    llm = infer.LLM.from_params(params, cfg, tok, **ENGINE)
    schema = SCHEMAS[0]
    sp = SamplingParams(temperature=0.0, max_new_tokens=48, constraint=Constraint.json_schema(schema))
    (out,) = llm.generate([chat_ids(tok, "Describe a person.")], sp, use_tqdm=False)  # the batch's shapes
    jsonschema.validate(json.loads(out.text), schema)
    (reply,) = llm.chat([[{"role": "user", "content": "Is Paris in France?"}]],
                        SamplingParams(temperature=0.0, max_new_tokens=8,
                                       constraint=Constraint.grammar('start: "Yes" | "No"')), use_tqdm=False)
    assert reply.text in ("Yes", "No") and reply.finish_reason == "stop"
