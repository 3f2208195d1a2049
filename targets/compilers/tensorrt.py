"""TensorRT: an engine (``<role>.engine``) built from the ONNX model on the machine that
will run it (engines are specific to the GPU and TensorRT version), FP32 or, with
``int8``, from the symmetric QDQ ONNX of ``quantize.tensorrt`` (explicit quantization).
One optimization profile covers each dynamic axis up to the largest fixed window
(``edgetok.windows``); the timing cache (``timing.cache`` in the work directory) makes
rebuilds fast."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from targets.compilers import Artifact, ToolchainError, require

INSTALL = (
    "TensorRT comes with JetPack on a Jetson (python3-libnvinfer) and cannot be installed "
    "from PyPI here: run `edgetok build --target jetson` on the Jetson itself"
)
WORKSPACE_BYTES = 1 << 30


class TensorRtCompiler:
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
        source = bundle.path_of(role)
        import tensorrt as trt

        if int8:
            from quantize import get_quantizer

            source = get_quantizer(self.backend).quantize(
                source, role, calib or [], work_dir=work_dir
            )
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
        config.add_optimization_profile(_profile(builder, network, role))
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise ValueError(f"{source}: TensorRT could not build an engine for {role}")
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        out = out_dir / f"{role}.engine"
        out.write_bytes(memoryview(engine))
        return Artifact(out.name, "int8" if int8 else "fp32")


#: The decoder's key/value-cache inputs: [layers, B, heads, P, head_dim], P from 0.
_CACHE_INPUTS = ("past_keys", "past_values")


def _profile(builder: object, network: object, role: str) -> object:
    """min/opt/max shapes: each windowed axis from 1 to its largest window, batch 1. A
    decoder with a key/value cache: cache length P from 0 to the largest prefix + text
    window, prefix length S from 0 (each character's step has no prefix)."""
    from edgetok.windows import SCHEMES

    scheme = SCHEMES[role]
    profile = builder.create_optimization_profile()
    past = sum(max(sizes) for sizes in scheme.sizes.values())
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    cached = any(name in _CACHE_INPUTS for name in names)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        axes = scheme.inputs.get(tensor.name, {})
        shapes = []
        for size in ("min", "opt", "max"):
            shape = []
            for dim, length in enumerate(tensor.shape):
                if tensor.name in _CACHE_INPUTS and dim == 3:
                    shape.append({"min": 0, "opt": 64, "max": past}[size])
                elif dim in axes:
                    sizes = scheme.sizes[axes[dim]]
                    low = 0 if cached and axes[dim] == "S" else 1
                    shape.append({"min": low, "opt": sizes[0], "max": sizes[-1]}[size])
                else:
                    shape.append(length if length >= 0 else 1)
            shapes.append(shape)
        profile.set_shape(tensor.name, *shapes)
    return profile
