"""One compiler per backend: a bundle's FP32 ONNX model -> that backend's artifact.

A compiler's ``compile(bundle, role, out_dir, int8=..., calib=..., work_dir=...)`` writes
the role's model, compiled from the bundle's FP32 ONNX, into ``out_dir`` and returns its
``Artifact`` (file name, precision). With ``int8`` it quantizes through
``edgetok.quantize.get_quantizer(backend)`` on the role's calibration feeds. ``check()`` imports
the backend's toolchain first, so a missing one is one ``ToolchainError`` before any
work; ``unsupported(bundle)`` names what a compiler cannot build (None: it can). Compilers
subclass the ``Compiler`` protocol for its defaults and are imported lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from edgetok.runtime import TensorSpec

if TYPE_CHECKING:
    from edgetok.bundle import Bundle

__all__ = ["Artifact", "Compiler", "ToolchainError", "compilers", "get_compiler", "require"]

_COMPILERS: Final = {
    "onnxruntime": "edgetok.targets.compilers.onnxruntime:OnnxRuntimeCompiler",
    "openvino": "edgetok.targets.compilers.openvino:OpenVinoCompiler",
    "litert": "edgetok.targets.compilers.litert:LiteRtCompiler",
    "tensorrt": "edgetok.targets.compilers.tensorrt:TensorRtCompiler",
}


class ToolchainError(RuntimeError):
    """A backend's toolchain is missing here; the message says what to install or where
    to build instead."""


@dataclass(frozen=True)
class Artifact:
    """A compiled model: its file name in the output directory and its precision, and
    its inputs/outputs where they differ from the source model's (else None)."""

    file: str
    precision: str
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None


class Compiler(Protocol):
    backend: str

    def check(self) -> None:
        """Raise ``ToolchainError`` when this backend cannot be built here."""
        ...

    def unsupported(self, bundle: Bundle) -> str | None:
        """Why this backend cannot compile ``bundle``'s models; None when it can."""
        return None

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
        """Compile the FP32 ONNX model of ``role`` in ``bundle`` into ``out_dir``."""
        ...


def require(*modules: str, install: str) -> None:
    """Import ``modules`` or raise one ``ToolchainError`` saying what to install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except (ImportError, OSError) as exc:  # OSError: a wheel whose shared libraries fail
            raise ToolchainError(f"{module} is not installed here ({exc}); {install}") from None


def compilers() -> tuple[str, ...]:
    """Backends that have a compiler."""
    return tuple(_COMPILERS)


def get_compiler(backend: str) -> Compiler:
    """The compiler of ``backend`` (its module imported now, its toolchain at ``check``)."""
    if backend not in _COMPILERS:
        raise ValueError(f"no compiler for backend {backend!r}; known: {', '.join(_COMPILERS)}")
    module, attribute = _COMPILERS[backend].split(":")
    return getattr(importlib.import_module(module), attribute)()
