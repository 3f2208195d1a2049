"""LiteRT adapter: a fixed-window ``.tflite`` (``edgetok.windows``) run at any input size.

The model holds one signature per window (``<role>_<AXIS><size>...``); ``run`` picks the
smallest window that holds the input, zero-pads to it (adding the ``<AXIS>_valid``
lengths), runs that signature and crops the outputs, so the session declares the same
dynamic I/O as the ONNX model it was built from. Uses ``ai_edge_litert``'s Interpreter,
or ``tflite_runtime``'s where that is all a device has. ``SessionOptions.threads`` is
the interpreter's thread count (XNNPACK); the precision hint is not used (the graph's
own types run). No ``SessionOptions.extra`` keys. The converter narrows int64 inputs to
int32; the session declares and takes them as int64, the models' contract type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np

from edgetok.runtime import SessionOptions, TensorSpec, check_inputs
from edgetok.windows import (
    SCHEMES,
    crop_outputs,
    pad_inputs,
    parse_signature,
    pick_window,
    valid_input,
)

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # a device with only the legacy runtime
    from tflite_runtime.interpreter import Interpreter


#: Element types the converter narrows, and the contract type the session declares.
_WIDENED: Final = {"int32": "int64"}


class LiteRtSession:
    """One interpreter with a signature runner per window."""

    def __init__(self, path: Path, *, options: SessionOptions) -> None:
        if options.extra:
            raise ValueError(
                f"litert: unknown option(s) {', '.join(options.extra)} in SessionOptions.extra"
            )
        self.path = path
        interpreter = Interpreter(model_path=str(path), num_threads=options.threads)
        names = list(interpreter.get_signature_list())
        try:
            parsed = [parse_signature(name) for name in names]
        except ValueError as exc:
            raise ValueError(f"{path}: not a fixed-window model: {exc}") from None
        roles = {role for role, _ in parsed}
        if len(roles) != 1:
            raise ValueError(f"{path}: signatures of several roles {sorted(roles)}: {names}")
        self.scheme = SCHEMES[roles.pop()]
        self.windows = [window for _, window in parsed]
        self._runners = {
            tuple(window.items()): interpreter.get_signature_runner(name)
            for name, (_, window) in zip(names, parsed, strict=True)
        }
        runner = next(iter(self._runners.values()))
        self._input_details = runner.get_input_details()
        self.inputs, self.outputs = self._specs(runner)

    def _specs(self, runner: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Public I/O: the signature's, padded dims named by their axis, lengths hidden."""
        hidden = {valid_input(axis) for axis in self.scheme.valid}
        inputs = [
            self._spec(name, detail, self.scheme.inputs.get(name, {}))
            for name, detail in self._input_details.items()
            if name not in hidden
        ]
        order = list(self.scheme.inputs)
        inputs.sort(key=lambda spec: order.index(spec.name) if spec.name in order else len(order))
        details = sorted(runner.get_output_details().items(), key=lambda kv: _index(kv[0]))
        named = list(self.scheme.outputs.items())[: len(details)]  # the model's first outputs
        outputs = [
            self._spec(name, detail, {d: axis for d, (axis, _) in dims.items()})
            for (_, detail), (name, dims) in zip(details, named, strict=True)
        ]
        return inputs, outputs

    def _spec(self, name: str, detail: dict[str, Any], axes: dict[int, str]) -> TensorSpec:
        shape = tuple(axes.get(d, int(size)) for d, size in enumerate(detail["shape"]))
        dtype = np.dtype(detail["dtype"]).name
        try:
            return TensorSpec(name, _WIDENED.get(dtype, dtype), shape)
        except ValueError as exc:
            raise ValueError(f"{self.path}: unsupported model I/O: {exc}") from None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs``, run them in the smallest window that holds them, crop."""
        check_inputs(inputs, self.inputs, model=self.path)
        try:
            window, lengths = pick_window(self.scheme, inputs, self.windows)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        feeds = pad_inputs(self.scheme, inputs, window, lengths)
        feeds = {
            name: np.ascontiguousarray(value, dtype=self._input_details[name]["dtype"])
            for name, value in feeds.items()
        }
        raw = self._runners[tuple(window.items())](**feeds)
        named = {
            spec.name: raw[key]
            for spec, key in zip(self.outputs, sorted(raw, key=_index), strict=True)
        }
        return crop_outputs(self.scheme, named, lengths)


def _index(output_name: str) -> int:
    """Position of a converter-named output (``output_0``, ``output_1``, ...)."""
    return int(output_name.rsplit("_", 1)[-1])
