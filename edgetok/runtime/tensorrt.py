"""TensorRT adapter: a serialized engine (``.engine``) built on the device that runs it.

Engines are specific to a GPU and a TensorRT version, so ``edgetok build --target
jetson`` builds them on the Jetson (targets/compilers/tensorrt.py). Needs ``tensorrt``
(from JetPack) and ``cuda-python`` for device memory; both are imported only when this
backend is opened. ``SessionOptions.threads`` and the precision hint are not used (the
engine's own precisions run). ``SessionOptions.extra`` keys:

- ``device``: the CUDA device index (default 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import tensorrt as trt

from edgetok.runtime import SessionOptions, TensorSpec, check_inputs

try:
    from cuda.bindings import runtime as cudart
except ImportError:  # cuda-python < 12.6
    from cuda import cudart

_EXTRA_KEYS: Final = ("device",)
_LOGGER = trt.Logger(trt.Logger.WARNING)


def _check(result: Any) -> Any:
    """The value of a cuda-python call, raising on a CUDA error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class TensorRtSession:
    """One deserialized engine and execution context; I/O declared by the engine. Each
    tensor's device buffer is kept between runs and grown only when a run needs more."""

    def __init__(self, path: Path, *, options: SessionOptions) -> None:
        unknown = [key for key in options.extra if key not in _EXTRA_KEYS]
        if unknown:
            raise ValueError(
                f"tensorrt: unknown option(s) {', '.join(unknown)} in SessionOptions.extra; "
                f"known: {', '.join(_EXTRA_KEYS)}"
            )
        _check(cudart.cudaSetDevice(int(options.extra.get("device", 0))))
        self.path = path
        self._engine = trt.Runtime(_LOGGER).deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ValueError(f"{path}: not a TensorRT engine for this GPU and TensorRT version")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}
        """Tensor name -> (device address, capacity in bytes)."""
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]

    def _spec(self, name: str) -> TensorSpec:
        dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
        shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
        return TensorSpec(name, dtype, shape)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy ``inputs`` to the GPU, run the engine, copy every output back."""
        check_inputs(inputs, self.inputs, model=self.path)
        for spec in self.inputs:
            host = np.ascontiguousarray(inputs[spec.name])
            self._context.set_input_shape(spec.name, host.shape)
            _check(
                cudart.cudaMemcpyAsync(
                    self._bind(spec.name, host.nbytes),
                    host.ctypes.data,
                    host.nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self._stream,
                )
            )
        results = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            results[spec.name] = np.empty(shape, dtype=spec.dtype)
            self._bind(spec.name, results[spec.name].nbytes)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for spec in self.outputs:
            host = results[spec.name]
            _check(
                cudart.cudaMemcpyAsync(
                    host.ctypes.data,
                    self._buffers[spec.name][0],
                    host.nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    self._stream,
                )
            )
        _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def _bind(self, name: str, nbytes: int) -> int:
        """The device address of ``name``'s buffer, at least ``nbytes`` long (reallocated,
        at twice the size, only when the kept one is smaller), set on the context."""
        device, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if device:
                _check(cudart.cudaFree(device))
                del self._buffers[name]
            capacity = max(2 * capacity, nbytes, 1)
            device = int(_check(cudart.cudaMalloc(capacity)))
            self._buffers[name] = (device, capacity)
        self._context.set_tensor_address(name, device)
        return device

    def __del__(self) -> None:
        """Free the device buffers and the stream."""
        for device, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(device)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
