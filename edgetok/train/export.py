"""ONNX export with the contract's I/O names and dynamic axes, checked in onnxruntime.

Uses the dynamo exporter (``dynamo=True``): the legacy one keeps traced lengths
(shared/TOOLCHAIN.md). Each ``export_<role>`` writes one self-contained .onnx file, runs
it in onnxruntime at two lengths other than the export example, and returns the largest
absolute difference from torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgetok.train.models import (
    Aggregator,
    Decoder,
    DecoderExport,
    EntropyLM,
    EntropyLMExport,
    FeatureAggregator,
    TokenizerEncoder,
    TokenizerExport,
)

OPSET = 18
#: I/O names of the bundle's decoder graph (``export_decoder``).
DECODER_INPUTS = ("prefix", "text", "past_keys", "past_values")
DECODER_OUTPUTS = ("logits", "keys", "values")
Inputs = tuple[torch.Tensor, ...]


def export_onnx(
    module: nn.Module,
    example_inputs: Inputs,
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: dict[str, dict[int, str]],
) -> Path:
    """Export ``module`` (put in eval mode) to a single-file ONNX at ``path``.

    ``dynamic_shapes`` maps each input name to ``{axis: axis_name}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with warnings.catch_warnings():
        # Inputs sharing an axis name (N, L, B) make the exporter warn that it keeps one.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


def max_abs_diff(module: nn.Module, path: str | Path, input_sets: Sequence[Inputs]) -> float:
    """Largest |onnxruntime - torch| over all outputs and input sets."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    module.eval()
    worst = 0.0
    for inputs in input_sets:
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {name: t.numpy() for name, t in zip(names, inputs, strict=True)}
        for got, want in zip(session.run(None, feeds), expected, strict=True):
            if got.shape != tuple(want.shape):
                raise AssertionError(f"{path}: shape {got.shape} != torch {tuple(want.shape)}")
            worst = max(worst, float(np.max(np.abs(got - want.numpy()), initial=0.0)))
    return worst


def _export_and_check(
    module: nn.Module,
    make_inputs: Callable[..., Inputs],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: dict[str, dict[int, str]],
    example: tuple[int, ...],
    checks: Sequence[tuple[int, ...]],
    fp16_weights: bool = False,
    rewrite: Callable[[onnx.ModelProto], object] | None = None,
) -> float:
    """Export with ``make_inputs(*example)``; compare at ``make_inputs(*c)`` for c in checks.
    ``fp16_weights``: store the weights as float16 (``onnx_fp16``) before the comparison,
    so the difference includes their rounding; ``rewrite`` edits the graph in place before
    it too."""
    gen = torch.Generator().manual_seed(0)
    export_onnx(module, make_inputs(gen, *example), path, input_names, output_names, dynamic_shapes)
    if fp16_weights:
        from edgetok.train.onnx_fp16 import store_weights_fp16

        store_weights_fp16(path, path)
    if rewrite is not None:
        model = onnx.load(str(path))
        rewrite(model)
        onnx.save(model, str(path))
    return max_abs_diff(module, path, [make_inputs(gen, *c) for c in checks])


def export_tokenizer(enc: TokenizerEncoder, path: str | Path) -> float:
    """``mel`` [B, T, 80] -> ``features`` [B, ceil(T/2), 256]; returns the ORT max abs diff."""

    def make(gen: torch.Generator, b: int, t: int) -> Inputs:
        return (torch.randn(b, t, enc.cfg.n_mels, generator=gen),)

    return _export_and_check(
        TokenizerExport(enc),
        make,
        path,
        ["mel"],
        ["features"],
        {"mel": {0: "B", 1: "T"}},
        example=(2, 100),
        checks=[(1, 37), (3, 250)],
    )


def export_entropy_lm(lm: EntropyLM, path: str | Path, *, fp16_weights: bool = False) -> float:
    """``tokens`` [B, T] -> ``entropy`` [B, T], ``logits`` [B, T, K]; returns ORT max abs diff
    (``fp16_weights``: weights stored as float16)."""

    def make(gen: torch.Generator, b: int, t: int) -> Inputs:
        return (torch.randint(0, lm.cfg.vocab_size, (b, t), generator=gen),)

    return _export_and_check(
        EntropyLMExport(lm),
        make,
        path,
        ["tokens"],
        ["entropy", "logits"],
        {"tokens": {0: "B", 1: "T"}},
        example=(2, 50),
        checks=[(1, 17), (3, 130)],
        fp16_weights=fp16_weights,
    )


def export_aggregator(agg: Aggregator, path: str | Path) -> float:
    """``tokens`` [N, L], ``mask`` [N, L] -> ``vectors`` [N, 256]; returns ORT max abs diff."""

    def make(gen: torch.Generator, n: int, length: int) -> Inputs:
        tokens = torch.randint(0, agg.cfg.vocab_size, (n, length), generator=gen)
        lengths = torch.randint(1, length + 1, (n,), generator=gen)
        return tokens, torch.arange(length)[None, :] < lengths[:, None]

    return _export_and_check(
        agg,
        make,
        path,
        ["tokens", "mask"],
        ["vectors"],
        {"tokens": {0: "N", 1: "L"}, "mask": {0: "N", 1: "L"}},
        example=(6, 8),
        checks=[(3, 1), (11, agg.cfg.max_len)],
    )


def export_feature_aggregator(agg: FeatureAggregator, path: str | Path) -> float:
    """v2: ``frames`` [N, L, F], ``mask`` [N, L] -> ``vectors`` [N, F], weights stored as
    float16; returns ORT max abs diff."""

    def make(gen: torch.Generator, n: int, length: int) -> Inputs:
        frames = torch.randn(n, length, agg.cfg.feature_dim, generator=gen)
        lengths = torch.randint(1, length + 1, (n,), generator=gen)
        return frames, torch.arange(length)[None, :] < lengths[:, None]

    return _export_and_check(
        agg,
        make,
        path,
        ["frames", "mask"],
        ["vectors"],
        {"frames": {0: "N", 1: "L"}, "mask": {0: "N", 1: "L"}},
        example=(6, 8),
        checks=[(3, 1), (11, agg.cfg.max_len)],
        fp16_weights=True,
    )


def export_decoder(dec: Decoder, path: str | Path) -> float:
    """The bundle's decoder: one graph with a key/value cache (``DecoderExport``).

    ``prefix`` [B, S, 256], ``text`` [B, U], ``past_keys``/``past_values``
    [layers, B, heads, P, head_dim] -> ``logits`` [B, U, V], ``keys``/``values``
    [layers, B, heads, P + S + U, head_dim]; S, U and P are dynamic and S and P may be 0.
    Greedy decoding runs it once on the segment vectors and BOS with an empty cache, then
    once per character (S = 0, U = 1); P = 0 with the whole text is the full decoder.
    Checked in onnxruntime where decoding runs it (prefill, steps, longer caches, batch 3)
    and, at P = 0, against the full-sequence ``Decoder.forward``; returns the largest
    absolute difference from torch.
    """
    cfg = dec.cfg
    head_dim = cfg.dim // cfg.heads
    module = DecoderExport.of(dec)

    def make(gen: torch.Generator, b: int, s: int, u: int, p: int) -> Inputs:
        prefix = torch.randn(b, s, cfg.prefix_dim, generator=gen)
        text = torch.randint(0, cfg.vocab_size, (b, u), generator=gen)
        past = [torch.randn(cfg.layers, b, cfg.heads, p, head_dim, generator=gen) for _ in "kv"]
        return prefix, text, *past

    past_axes = {1: "B", 3: "P"}
    diff = _export_and_check(
        module,
        make,
        path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {
            "prefix": {0: "B", 1: "S"},
            "text": {0: "B", 1: "U"},
            "past_keys": past_axes,
            "past_values": past_axes,
        },
        example=(2, 12, 3, 5),
        checks=[(1, 7, 1, 0), (1, 0, 1, 9), (1, 0, 1, 150), (3, 4, 5, 6), (1, 40, 23, 0)],
    )
    return max(diff, _full_sequence_diff(dec, path))


def _full_sequence_diff(dec: Decoder, path: str | Path) -> float:
    """Largest |onnxruntime (P = 0) - ``Decoder.forward``| of the logits, a few lengths."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    cfg = dec.cfg
    empty = np.zeros((cfg.layers, 1, cfg.heads, 0, cfg.dim // cfg.heads), np.float32)
    dec.eval()
    worst = 0.0
    for s, u in ((1, 1), (9, 4), (60, 120)):
        prefix = torch.randn(1, s, cfg.prefix_dim, generator=gen)
        text = torch.randint(0, cfg.vocab_size, (1, u), generator=gen)
        with torch.no_grad():
            want = dec(prefix, text).numpy()
        feeds = {"prefix": prefix.numpy(), "text": text.numpy()}
        got = session.run(["logits"], {**feeds, "past_keys": empty, "past_values": empty})[0]
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def export_semantic_tokenizer(module: nn.Module, path: str | Path) -> float:
    """The v2 tokenizer (``fit_semantic.SemanticTokenizerExport``): ``mel`` [B, T, 80] ->
    ``features`` [B, ceil(T/2), d] and ``frames`` [B, ceil(T/2), 384], weights stored as
    float16; returns the ORT max abs diff against torch at other lengths."""

    def make(gen: torch.Generator, b: int, t: int) -> Inputs:
        return (torch.randn(b, t, 80, generator=gen) * 2 - 8,)

    return _export_and_check(
        module,
        make,
        path,
        ["mel"],
        ["features", "frames"],
        {"mel": {0: "B", 1: "T"}},
        example=(2, 100),
        checks=[(1, 37), (3, 250), (1, 1001)],
        fp16_weights=True,
    )


#: I/O of the v2 server graphs (``fit_whisper_decoder``).
CONTEXT_INPUTS = ("vectors",)
CONTEXT_OUTPUTS = ("cross_keys", "cross_values")
STEP_INPUTS = ("text", "cross_keys", "cross_values", "past_keys", "past_values")
STEP_OUTPUTS = ("logits", "keys", "values")


def export_whisper_decoder(model: nn.Module, context_path: Path, step_path: Path) -> float:
    """The v2 decoder as two graphs (``DecoderContextExport``, ``DecoderStepExport``) with
    dynamic batch, segments S, text U and cache P (P may be 0), weights stored as float16,
    the step's cross-attention inputs broadcast over its batch (``onnx_batch``); returns
    the largest ORT difference from torch over both."""
    from edgetok.train.fit_whisper_decoder import DecoderContextExport, DecoderStepExport
    from edgetok.train.onnx_batch import broadcast_cross_batch

    dims = model.decoder.dims
    layers, heads, head_dim = dims.decoder_layers, dims.heads, dims.dim // dims.heads

    def make_context(gen: torch.Generator, b: int, s: int) -> Inputs:
        return (torch.randn(b, s, dims.dim, generator=gen),)

    def make_step(gen: torch.Generator, b: int, s: int, u: int, p: int) -> Inputs:
        text = torch.randint(0, dims.vocab, (b, u), generator=gen)
        cross = [torch.randn(layers, b, heads, s, head_dim, generator=gen) for _ in "kv"]
        past = [torch.randn(layers, b, heads, p, head_dim, generator=gen) for _ in "kv"]
        return text, *cross, *past

    cache_axes = {1: "B", 3: "P"}
    cross_axes = {1: "B", 3: "S"}
    context_diff = _export_and_check(
        DecoderContextExport(model),
        make_context,
        context_path,
        CONTEXT_INPUTS,
        CONTEXT_OUTPUTS,
        {"vectors": {0: "B", 1: "S"}},
        example=(2, 9),
        checks=[(1, 1), (1, 150)],
        fp16_weights=True,
    )
    step_diff = _export_and_check(
        DecoderStepExport(model),
        make_step,
        step_path,
        STEP_INPUTS,
        STEP_OUTPUTS,
        {
            "text": {0: "B", 1: "U"},
            "cross_keys": cross_axes,
            "cross_values": cross_axes,
            "past_keys": cache_axes,
            "past_values": cache_axes,
        },
        example=(2, 9, 3, 4),
        checks=[(1, 40, 2, 0), (4, 40, 1, 17), (1, 3, 1, 100)],
        fp16_weights=True,
        rewrite=broadcast_cross_batch,
    )
    return max(context_diff, step_diff)


def export_token_reader(reader: nn.Module, path: str | Path) -> float:
    """Wire v2's server-side ``TokenReader``: ``tokens`` [B, T] int64 -> ``frames``
    [B, T, F] (every row whole), weights stored as float16; returns ORT max abs diff."""

    def make(gen: torch.Generator, b: int, t: int) -> Inputs:
        return (torch.randint(0, reader.vocab_size, (b, t), generator=gen),)

    return _export_and_check(
        reader,
        make,
        path,
        ["tokens"],
        ["frames"],
        {"tokens": {0: "B", 1: "T"}},
        example=(2, 40),
        checks=[(1, 7), (1, 300)],
        fp16_weights=True,
    )
