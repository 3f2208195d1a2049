"""Fixed windows: how a model compiled for fixed shapes (LiteRT) runs inputs of any size.

Every model role has a windowing scheme (docs/architecture.md, "Fixed windows"): the
dynamic axes it pads, the window sizes it is compiled for, the axes whose real length
goes in as an extra int32 input ``<AXIS>_valid`` [1] (where padding would change the
output: the tokenizer's bidirectional attention, the decoder's prefix), and how each
output axis follows an input axis. An input is padded with zeros (``False`` for the
aggregator's mask) up to the smallest window that holds it; outputs are cropped back.

Batch is 1 (the pipeline's batch) except the aggregator's segment axis ``N``, which is
the axis it pads. One signature per combination of window sizes is named
``<role>_<AXIS><size>[_<AXIS><size>]``, e.g. ``decoder_S64_U160``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "SCHEMES",
    "WindowScheme",
    "clip_inputs",
    "crop_outputs",
    "pad_inputs",
    "parse_signature",
    "pick_window",
    "signature_name",
    "valid_input",
]

Window = dict[str, int]


@dataclass(frozen=True)
class WindowScheme:
    """The windowing of one model role.

    ``inputs``: input name -> {dim: axis} of the padded dims. ``valid``: axes whose real
    length is passed as ``<AXIS>_valid``. ``outputs``: output name -> {dim: (axis,
    divisor)}: the real output size is ``ceil(real axis length / divisor)``. ``sizes``:
    axis -> the window sizes compiled, ascending. ``fixed``: input name -> {dim: size}
    for the other dims that are fixed to one value (the batch of 1). A scheme serves both
    bundle generations: an input it names that a model lacks is skipped (v1's aggregator
    reads ``tokens``, v2's ``frames``), and a model gives the first of ``outputs`` in
    their order (v1's tokenizer ``features``, v2's also ``frames``).
    """

    role: str
    inputs: Mapping[str, Mapping[int, str]]
    valid: tuple[str, ...]
    outputs: Mapping[str, Mapping[int, tuple[str, int]]]
    sizes: Mapping[str, tuple[int, ...]]
    fixed: Mapping[str, Mapping[int, int]]

    def windows(self) -> list[Window]:
        """Every combination of window sizes, smallest first."""
        axes = list(self.sizes)
        combos = itertools.product(*(self.sizes[a] for a in axes))
        return sorted(
            (dict(zip(axes, combo, strict=True)) for combo in combos),
            key=lambda w: (math.prod(w.values()), tuple(w.values())),
        )


SCHEMES: Final[dict[str, WindowScheme]] = {
    "tokenizer": WindowScheme(
        role="tokenizer",
        inputs={"mel": {1: "T"}},
        valid=("T",),
        outputs={"features": {1: ("T", 2)}, "frames": {1: ("T", 2)}},  # v2 also: frames
        sizes={"T": (512, 1024, 2048, 3000)},  # mel frames: 5.1, 10.2, 20.5, 30 s
        fixed={"mel": {0: 1}},
    ),
    "entropy_lm": WindowScheme(
        role="entropy_lm",
        inputs={"tokens": {1: "T"}},
        valid=(),  # causal: right padding never reaches an earlier position
        outputs={"entropy": {1: ("T", 1)}, "logits": {1: ("T", 1)}},
        sizes={"T": (256, 512, 1024, 1536)},  # tokens at 50 Hz: 5.1, 10.2, 20.5, 30.7 s
        fixed={"tokens": {0: 1}},
    ),
    "aggregator": WindowScheme(
        role="aggregator",
        inputs={"tokens": {0: "N"}, "frames": {0: "N"}, "mask": {0: "N"}},  # v1 tokens, v2 frames
        valid=(),  # rows are independent; padded rows are dropped
        outputs={"vectors": {0: ("N", 1)}},
        sizes={"N": (64, 256, 1024)},
        fixed={},
    ),
    "decoder": WindowScheme(
        role="decoder",
        inputs={"prefix": {1: "S"}, "text": {1: "U"}},
        valid=("S",),  # text is causal, the padded prefix is masked
        outputs={"logits": {1: ("U", 1)}},
        sizes={"S": (64, 320), "U": (64, 160, 416)},
        fixed={"prefix": {0: 1}, "text": {0: 1}},
    ),
}

_SIGNATURE = re.compile(r"(?P<role>[a-z_]+?)((?:_[A-Z]+\d+)+)")


def valid_input(axis: str) -> str:
    """Name of the int32 [1] input that carries the real length of ``axis``."""
    return f"{axis}_valid"


def signature_name(role: str, window: Mapping[str, int]) -> str:
    """``<role>_<AXIS><size>...`` for one window."""
    return role + "".join(f"_{axis}{size}" for axis, size in window.items())


def parse_signature(name: str) -> tuple[str, Window]:
    """(role, window) of a signature name; ValueError when it is not one."""
    match = _SIGNATURE.fullmatch(name)
    if match is None or match["role"] not in SCHEMES:
        raise ValueError(f"{name!r} is not a fixed-window signature name (<role>_<AXIS><size>)")
    parts = re.findall(r"_([A-Z]+)(\d+)", name[len(match["role"]) :])
    return match["role"], {axis: int(size) for axis, size in parts}


def _lengths(scheme: WindowScheme, inputs: Mapping[str, np.ndarray]) -> Window:
    """The real length of each padded axis, checked to agree between inputs."""
    lengths: Window = {}
    for name, dims in scheme.inputs.items():
        if name not in inputs:  # the other generation's input (v1 tokens, v2 frames)
            continue
        for dim, axis in dims.items():
            size = int(inputs[name].shape[dim])
            if lengths.setdefault(axis, size) != size:
                raise ValueError(f"{scheme.role}: inputs disagree on the length of axis {axis}")
    for name, dims in scheme.fixed.items():
        for dim, size in dims.items():
            if inputs[name].shape[dim] != size:
                raise ValueError(
                    f"{scheme.role}: input {name!r} must have size {size} on axis {dim} "
                    f"with fixed windows, got shape {inputs[name].shape}"
                )
    return lengths


def pick_window(
    scheme: WindowScheme, inputs: Mapping[str, np.ndarray], windows: list[Window]
) -> tuple[Window, Window]:
    """(window, real lengths): the smallest of ``windows`` that holds ``inputs``."""
    lengths = _lengths(scheme, inputs)
    for window in sorted(windows, key=lambda w: math.prod(w.values())):
        if all(lengths[axis] <= size for axis, size in window.items()):
            return window, lengths
    largest = {axis: max(w[axis] for w in windows) for axis in lengths}
    raise ValueError(
        f"{scheme.role}: input lengths {lengths} exceed the largest fixed window {largest}; "
        "split the input or rebuild the model with larger windows"
    )


def pad_inputs(
    scheme: WindowScheme, inputs: Mapping[str, np.ndarray], window: Window, lengths: Window
) -> dict[str, np.ndarray]:
    """``inputs`` zero-padded to ``window``, plus the ``<AXIS>_valid`` inputs."""
    feeds = {}
    for name, value in inputs.items():
        pad = [(0, 0)] * value.ndim
        for dim, axis in scheme.inputs.get(name, {}).items():
            pad[dim] = (0, window[axis] - value.shape[dim])
        feeds[name] = np.pad(value, pad) if any(after for _, after in pad) else value
    for axis in scheme.valid:
        feeds[valid_input(axis)] = np.array([lengths[axis]], dtype=np.int32)
    return feeds


def clip_inputs(
    scheme: WindowScheme, inputs: Mapping[str, np.ndarray], window: Window
) -> dict[str, np.ndarray]:
    """``inputs`` cut to at most ``window`` along the padded axes (calibration data
    longer than the largest window)."""
    clipped = {}
    for name, value in inputs.items():
        index = [slice(None)] * value.ndim
        for dim, axis in scheme.inputs.get(name, {}).items():
            index[dim] = slice(0, window[axis])
        clipped[name] = value[tuple(index)]
    return clipped


def crop_outputs(
    scheme: WindowScheme, outputs: Mapping[str, np.ndarray], lengths: Window
) -> dict[str, np.ndarray]:
    """Outputs cropped from the window back to the real lengths."""
    cropped = {}
    for name, value in outputs.items():
        index = [slice(None)] * value.ndim
        for dim, (axis, divisor) in scheme.outputs.get(name, {}).items():
            index[dim] = slice(0, -(-lengths[axis] // divisor))
        cropped[name] = value[tuple(index)]
    return cropped
