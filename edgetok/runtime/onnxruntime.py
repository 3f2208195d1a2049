"""ONNX Runtime adapter.

``SessionOptions.threads`` sets the intra-op threads; execution is sequential, so there is
no inter-op pool (one thread). ONNX Runtime runs the graph's own types, so the precision
hint is not used. ``SessionOptions.extra`` keys:

- ``providers``: execution providers in order of preference, names or
  ``(name, provider_options)`` pairs; default ``["CPUExecutionProvider"]``. A provider
  that is not available here is an error, never a silent fallback.
- ``graph_optimization_level``: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``
  (default).
- ``memory_pattern``: bool, default True: plan the intermediates of each new input shape
  into one block. For a graph run with ever-changing shapes (a decoder step over a growing
  cache) the plans do not repeat, and each run's block grows the arena.
- ``cpu_arena``: bool, default True: ONNX Runtime's CPU arena keeps every block it took
  from the allocator for later runs; False gives freed memory back to the C allocator.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from edgetok.runtime import ModelError, SessionOptions, TensorSpec, check_inputs

_GRAPH_LEVELS: Final = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXTRA_KEYS: Final = ("providers", "graph_optimization_level", "memory_pattern", "cpu_arena")
_FLAGS: Final = {"memory_pattern": "enable_mem_pattern", "cpu_arena": "enable_cpu_mem_arena"}
# ONNX element type names that differ from numpy's.
_ONNX_TO_NUMPY: Final = {"float": "float32", "double": "float64"}
# What ONNX Runtime raises for a model it cannot parse, load or run (none derives from
# RuntimeError).
_ORT_ERRORS: Final = (
    _state.Fail,
    _state.InvalidArgument,
    _state.InvalidGraph,
    _state.InvalidProtobuf,
    _state.NoSuchFile,
    _state.NotImplemented,
    _state.RuntimeException,
)


class OnnxRuntimeSession:
    """One ``onnxruntime.InferenceSession``, created once; I/O declared by the model."""

    def __init__(self, path: Path, *, options: SessionOptions) -> None:
        unknown = [key for key in options.extra if key not in _EXTRA_KEYS]
        if unknown:
            raise ValueError(
                f"onnxruntime: unknown option(s) {', '.join(unknown)} in SessionOptions.extra; "
                f"known: {', '.join(_EXTRA_KEYS)}"
            )
        level = options.extra.get("graph_optimization_level", "all")
        if level not in _GRAPH_LEVELS:
            raise ValueError(
                f"onnxruntime: graph_optimization_level {level!r} is not one of "
                f"{', '.join(_GRAPH_LEVELS)}"
            )
        providers = list(options.extra.get("providers", ["CPUExecutionProvider"]))
        _check_providers(providers)

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = _GRAPH_LEVELS[level]
        for key, attribute in _FLAGS.items():
            value = options.extra.get(key, True)
            if not isinstance(value, bool):
                raise ValueError(f"onnxruntime: {key} must be True or False, got {value!r}")
            setattr(session_options, attribute, value)

        self.path = path
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=providers
            )
        except _ORT_ERRORS as exc:
            raise ModelError(path, "onnxruntime cannot load the model", exc) from None
        self.inputs = [_spec(arg, path) for arg in self._session.get_inputs()]
        self.outputs = [_spec(arg, path) for arg in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the model's, run, return every output by name."""
        check_inputs(inputs, self.inputs, model=self.path)
        try:
            values = self._session.run(self._output_names, inputs)
        except _ORT_ERRORS as exc:
            raise ModelError(self.path, "the model failed to run", exc) from None
        return dict(zip(self._output_names, values, strict=True))


def _check_providers(providers: Sequence[Any]) -> None:
    if not providers:
        raise ValueError("onnxruntime: providers must name at least one execution provider")
    available = ort.get_available_providers()
    for provider in providers:
        name = provider[0] if isinstance(provider, tuple) else provider
        if name not in available:
            raise ValueError(
                f"onnxruntime: execution provider {name!r} is not available here; "
                f"available: {', '.join(available)}"
            )


def _spec(arg: Any, path: Path) -> TensorSpec:
    """``TensorSpec`` of an ``onnxruntime.NodeArg`` (type like ``tensor(float)``)."""
    element = arg.type.removeprefix("tensor(").removesuffix(")")
    try:
        return TensorSpec(arg.name, _ONNX_TO_NUMPY.get(element, element), tuple(arg.shape))
    except ValueError as exc:
        raise ValueError(f"{path}: unsupported model I/O: {exc}") from exc
