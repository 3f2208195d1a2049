"""Segment codes (edgetok/segment_codes.py): residual VQ encode/decode and bit packing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetok.segment_codes import SegmentCodes, code_bits, pack, unpack


@st.composite
def codebooks(draw: st.DrawFn) -> SegmentCodes:
    stages = draw(st.integers(1, 4))
    bits = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return SegmentCodes(rng.normal(size=(stages, 2**bits, dim)).astype(np.float32))


@st.composite
def codes_for(draw: st.DrawFn) -> tuple[SegmentCodes, np.ndarray]:
    code = draw(codebooks())
    count = draw(st.integers(0, 20))
    values = draw(
        st.lists(
            st.integers(0, code.size - 1),
            min_size=count * code.stages,
            max_size=count * code.stages,
        )
    )
    return code, np.array(values, np.uint16).reshape(count, code.stages)


@settings(max_examples=200, deadline=None)
@given(codes_for())
def test_pack_round_trip_is_exact_and_sized(item: tuple[SegmentCodes, np.ndarray]) -> None:
    code, codes = item
    bits = code_bits(code.size)
    data = pack(codes, bits)
    assert len(data) == (codes.size * bits + 7) // 8
    back = unpack(data, codes.shape[0], code.stages, bits)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, codes)


@settings(max_examples=200, deadline=None)
@given(codes_for())
def test_decode_is_the_sum_of_the_chosen_rows(item: tuple[SegmentCodes, np.ndarray]) -> None:
    code, codes = item
    out = code.decode(codes)
    assert out.dtype == np.float32 and out.shape == (codes.shape[0], code.dim)
    for s in range(codes.shape[0]):
        expected = np.zeros(code.dim, np.float32)
        for m in range(code.stages):
            expected = expected + code.codebooks[m, codes[s, m]]
        np.testing.assert_array_equal(out[s], expected)


@settings(max_examples=100, deadline=None)
@given(codes_for())
def test_encode_of_a_codebook_sum_round_trips_through_bytes(
    item: tuple[SegmentCodes, np.ndarray],
) -> None:
    """Device: encode -> pack; server: unpack -> decode gives what the device meant."""
    code, codes = item
    vectors = code.decode(codes)
    sent = code.encode(vectors)
    bits = code_bits(code.size)
    received = unpack(pack(sent, bits), sent.shape[0], code.stages, bits)
    np.testing.assert_array_equal(received, sent)
    np.testing.assert_array_equal(code.decode(received), code.decode(sent))


@settings(max_examples=100, deadline=None)
@given(codebooks(), st.integers(0, 2**32 - 1), st.integers(1, 15))
def test_each_stage_picks_the_nearest_row_to_the_residual(
    code: SegmentCodes, seed: int, count: int
) -> None:
    x = np.random.default_rng(seed).normal(size=(count, code.dim)).astype(np.float32) * 2
    codes = code.encode(x)
    assert codes.shape == (count, code.stages) and codes.dtype == np.uint16
    residual = x.astype(np.float64)
    for m in range(code.stages):
        rows = code.codebooks[m].astype(np.float64)
        dist = ((residual[:, None, :] - rows[None]) ** 2).sum(-1)
        chosen = dist[np.arange(count), codes[:, m]]
        assert np.all(chosen <= dist.min(axis=1) + 1e-4 * (1 + dist.min(axis=1)))
        residual -= code.codebooks[m][codes[:, m]]
    # the stages decode to what encode subtracted
    np.testing.assert_allclose(x - code.decode(codes), residual, rtol=0, atol=1e-4)


def test_a_single_stage_code_of_its_rows_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    code = SegmentCodes(rng.normal(size=(1, 256, 16)).astype(np.float32))
    codes = code.encode(code.codebooks[0])
    np.testing.assert_array_equal(codes[:, 0], np.arange(256))
    np.testing.assert_array_equal(code.decode(codes), code.codebooks[0])


def test_prefix_save_and_load(tmp_path) -> None:
    rng = np.random.default_rng(1)
    code = SegmentCodes(rng.normal(size=(3, 16, 5)).astype(np.float32))
    assert code.bits == 12 and code.prefix(2).bits == 8
    path = tmp_path / "codes.npy"
    code.save(path)
    loaded = SegmentCodes.load(path, stages=2)
    np.testing.assert_array_equal(loaded.codebooks, code.codebooks[:2])
    x = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode(x), code.encode(x)[:, :2])


@pytest.mark.parametrize(
    ("books", "message"),
    [
        (np.zeros((2, 3, 4), np.float32), "power of two"),
        (np.zeros((2, 4), np.float32), "stages, size, dim"),
        (np.zeros((1, 4, 2), np.float64), "float32"),
        (np.full((1, 4, 2), np.nan, np.float32), "finite"),
    ],
)
def test_bad_codebooks_are_refused(books: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SegmentCodes(books)


def test_bad_codes_and_bytes_are_refused() -> None:
    code = SegmentCodes(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code.decode(np.array([[0, 4]]))
    with pytest.raises(ValueError, match="integers"):
        code.decode(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[S, 3\]"):
        code.encode(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="finite"):
        code.encode(np.full((1, 3), np.inf, np.float32))
    with pytest.raises(ValueError, match="expected 1 bytes"):
        unpack(b"\x00\x00", 1, 2, 2)
    with pytest.raises(ValueError, match="padding"):
        unpack(b"\xf0", 1, 2, 2)
    with pytest.raises(ValueError, match=r"2\^2"):
        pack(np.array([[4]]), 2)


def test_imports_without_torch() -> None:
    """The device encodes: the module must not need torch."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgetok.segment_codes\n"
        "assert sys.modules.get('torch') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
