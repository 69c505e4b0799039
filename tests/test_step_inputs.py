"""The ragged step refuses bad host input before the donated pools are consumed, and the pools survive."""
import jax
import numpy as np
import pytest

import infer
from infer.kv import MetadataError, SequenceStep, build_metadata, init_pools

Z, P = 4, 8


@pytest.fixture(scope="module")
def model(tiny):
    return tiny


def _ok_step(cfg):
    return build_metadata([SequenceStep(tokens=[1, 2, 3], pages=[5, 2])], page_size=Z, num_pages=P)


def test_write_past_reserved_pages_is_refused_and_names_the_sequence():
    with pytest.raises(MetadataError, match=r"sequence 1: writing positions \[6, 9\) goes past its 2 reserved pages"):
        build_metadata([SequenceStep(tokens=[1], pages=[0]), SequenceStep(tokens=[1, 2, 3], pages=[1, 2], cached=6)],
                       page_size=Z, num_pages=P)
    with pytest.raises(MetadataError, match=r"sequence 0: page table entry 8 is outside the pool \[0, 8\)"):
        build_metadata([SequenceStep(tokens=[1], pages=[8])], page_size=Z, num_pages=P)
    with pytest.raises(MetadataError, match="num_tokens: bucket 2 is smaller"):
        build_metadata([SequenceStep(tokens=[1, 2, 3], pages=[0])], page_size=Z, num_pages=P, num_tokens=2)


@pytest.mark.parametrize("bad", ["token", "page_table", "slot"])
def test_step_refuses_before_consuming_the_pools(model, bad):
    cfg, params = model
    kv = init_pools(cfg, P, Z)
    tokens, meta = _ok_step(cfg)
    _, kv = infer.step(params, cfg, tokens, meta, kv)
    before = jax.tree_util.tree_map(np.asarray, kv)
    if bad == "token":
        tokens = tokens.copy()
        tokens[1] = cfg.vocab_size
        match = f"token id {cfg.vocab_size} is outside"
    elif bad == "page_table":
        meta = meta.replace(page_table_RM=np.where(meta.page_table_RM == 2, P + 3, meta.page_table_RM))
        match = "page_table_RM: sequence 0 names a page outside the pool"
    else:
        meta = meta.replace(slot_T=np.where(meta.slot_T == 21, P * Z, meta.slot_T))
        match = "slot_T: a write slot is outside the pool"
    with pytest.raises(ValueError, match=match):
        infer.step(params, cfg, tokens, meta, kv)
    for name in kv:  # not donated, not changed
        assert not kv[name].is_deleted()
        np.testing.assert_array_equal(np.asarray(kv[name]), before[name])


def test_step_donates_the_pools(model):
    cfg, params = model
    kv = init_pools(cfg, P, Z)
    tokens, meta = _ok_step(cfg)
    old = kv["k"]
    _, kv = infer.step(params, cfg, tokens, meta, kv)
    assert old.is_deleted()


def test_metadata_that_does_not_fit_the_pools_or_tokens_is_refused(model):
    cfg, params = model
    kv = init_pools(cfg, P, Z)
    tokens, meta = build_metadata([SequenceStep(tokens=[1, 2, 3], pages=[0])], page_size=2 * Z, num_pages=P)
    with pytest.raises(MetadataError, match=f"built for pages of {2 * Z} tokens, the pools hold pages of {Z}"):
        infer.step(params, cfg, tokens, meta, kv)
    tokens, meta = _ok_step(cfg)
    with pytest.raises(MetadataError, match="tokens_T: 5 tokens, but the metadata describes 8"):
        infer.step(params, cfg, tokens[:5], meta, kv)
    assert not kv["k"].is_deleted()


def test_pool_dtype_and_sampling_list_errors_name_the_problem(model):
    cfg, params = model
    with pytest.raises(ValueError, match="dtype: page pools hold one of .* got 'int4'"):
        init_pools(cfg, P, Z, dtype="int4")
    with pytest.raises(ValueError, match=r"sampling\[0\]: expected a SamplingParams, got dict"):
        infer.generate(params, cfg, [[1]], [{"temperature": 0}])


def test_metadata_says_when_a_decode_steps_rows_are_its_tokens():
    """rows_in_order (static) is set exactly when every sequence holds its own row in a decode-only step of T == R:
    the engine's decode steps and the on-device loops' one-token rows, not a step whose sequences shift (an empty
    sequence before another), nor one with more tokens than rows."""
    import jax.numpy as jnp

    from infer.kv.metadata import SequenceStep, build_metadata, rows_metadata
    seq = lambda n, page: SequenceStep(tokens=[1] * n, pages=[page], cached=3)
    kw = dict(page_size=16, num_pages=8)
    assert build_metadata([seq(1, 0), seq(1, 1), seq(1, 2)], num_tokens=4, num_seqs=4, **kw)[1].rows_in_order
    assert not build_metadata([seq(1, 0), seq(1, 1)], num_tokens=8, num_seqs=2, **kw)[1].rows_in_order
    assert not build_metadata([seq(0, 0), seq(1, 1)], num_tokens=2, num_seqs=2, **kw)[1].rows_in_order
    assert not build_metadata([seq(2, 0), seq(1, 1)], num_tokens=4, num_seqs=4, **kw)[1].rows_in_order
    table = jnp.zeros((3, 2), jnp.int32)
    assert rows_metadata(table, jnp.zeros(3), jnp.ones(3), 1, 16).rows_in_order
    assert not rows_metadata(table, jnp.zeros(3), jnp.ones(3), 4, 16).rows_in_order
