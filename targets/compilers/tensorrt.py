"""TensorRT: an engine (``<role>.engine``) built from the ONNX model on the machine that
will run it (engines are specific to the GPU and TensorRT version), FP32 or, with
``int8``, from the symmetric QDQ ONNX of ``edgetok.quantize.tensorrt`` (explicit quantization).
One optimization profile covers each dynamic axis up to the largest fixed window
(``edgetok.windows``; ``profile_shapes``, by the manifest's dimension names, so a v2
aggregator's ``frames`` [N, L, 384] is covered like v1's ``tokens``); the timing cache
(``timing.cache`` in the work directory) makes rebuilds fast."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.beam import DEFAULT_BEAM
from edgetok.bundle import Bundle, ModelEntry
from edgetok.targets.compilers import Artifact, Compiler, ToolchainError, require

INSTALL = (
    "TensorRT comes with JetPack on a Jetson (python3-libnvinfer) and cannot be installed "
    "from PyPI here: run `edgetok build --target jetson` on the Jetson itself"
)
WORKSPACE_BYTES = 1 << 30


class TensorRtCompiler(Compiler):
    backend = "tensorrt"

    def check(self) -> None:
        require("tensorrt", install=INSTALL)
        import tensorrt as trt

        # Without a CUDA device the builder is None or its constructor raises (pybind11:
        # "factory function returned nullptr"), depending on the TensorRT version.
        try:
            builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        except Exception as exc:  # noqa: BLE001 - any failure here means no usable GPU
            builder, reason = None, f" ({exc})"
        else:
            reason = ""
        if builder is None:
            raise ToolchainError(f"TensorRT found no usable GPU here{reason}; {INSTALL}")

    def compile(
        self,
        bundle: Bundle,
        role: str,
        out_dir: Path,
        *,
        int8: bool,
        calib: Sequence[dict[str, np.ndarray]] | None,
        work_dir: Path,
    ) -> Artifact:
        import tensorrt as trt

        from edgetok.quantize import get_quantizer, single_file

        source = bundle.path_of(role)
        if int8:
            source = get_quantizer(self.backend).quantize(
                source, role, calib or [], work_dir=work_dir
            )
        source = single_file(source, work_dir)  # the parser reads bytes, not a directory
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(source.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"{source}: TensorRT cannot parse the model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        cache_path = work_dir / "timing.cache"
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        config.add_optimization_profile(_profile(builder, bundle, role))
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise ValueError(f"{source}: TensorRT could not build an engine for {role}")
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        out = out_dir / f"{role}.engine"
        out.write_bytes(memoryview(engine))
        return Artifact(out.name, "int8" if int8 else "fp32")


#: The decoder's key/value-cache inputs: [layers, B, heads, P, head_dim], P from 0.
_CACHE_INPUTS = ("past_keys", "past_values")
#: The largest batch of a decoder with a cache: the hypotheses of four utterances' beams.
MAX_DECODE_BATCH = 4 * DEFAULT_BEAM
Shapes = tuple[list[int], list[int], list[int]]


def profile_shapes(entry: ModelEntry, role: str, max_len: int) -> dict[str, Shapes]:
    """(min, opt, max) shape of each input, by the manifest's dimension names: each
    windowed axis (``edgetok.windows``: T, N, S, U) from 1 to its largest window, the
    segment width L at ``max_len`` (segments are padded to the width the aggregator was
    trained at), the batch 1. A decoder with a key/value cache: batch B (and a cross
    input's ``CROSS_BATCH``) from 1 to ``MAX_DECODE_BATCH``, tuned at one beam's
    hypotheses; cache length P from 0 to the largest prefix + text window, prefix length S
    from 0 (each character's step has no prefix)."""
    from edgetok.whisper_decoding import CROSS_BATCH
    from edgetok.windows import SCHEMES

    sizes = SCHEMES[role].sizes
    cached = any(spec.name in _CACHE_INPUTS for spec in entry.inputs)
    ranges = {
        axis: (0 if cached and axis == "S" else 1, windows[0], windows[-1])
        for axis, windows in sizes.items()
    }
    ranges["P"] = (0, 64, sum(max(windows) for windows in sizes.values()))
    ranges["L"] = (max_len,) * 3
    if cached:
        ranges["B"] = ranges[CROSS_BATCH] = (1, DEFAULT_BEAM, MAX_DECODE_BATCH)
    shapes = {}
    for spec in entry.inputs:
        dims = [
            (d,) * 3 if isinstance(d, int) else ranges.get(str(d), (1,) * 3) for d in spec.shape
        ]
        shapes[spec.name] = ([d[0] for d in dims], [d[1] for d in dims], [d[2] for d in dims])
    return shapes


def _profile(builder: object, bundle: Bundle, role: str) -> object:
    profile = builder.create_optimization_profile()
    for name, shapes in profile_shapes(bundle.models[role], role, bundle.segmenter.max_len).items():
        profile.set_shape(name, *shapes)
    return profile
