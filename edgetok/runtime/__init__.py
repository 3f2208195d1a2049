"""The runtime seam: one ``Session`` protocol, one registry of backend adapters.

A stage never knows which engine runs its model: it holds a ``Session`` from
``open_session(path, backend, options=...)``. Each backend is one adapter module in this
package, registered in ``_BACKENDS`` as ``"module:factory"`` and imported only when it is
asked for, so a device without OpenVINO or LiteRT never imports them.

An adapter factory is called as ``factory(path, options=options)`` and returns an object
that satisfies ``Session``; its ``run`` calls ``check_inputs`` before running the model.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "DTYPES",
    "PRECISIONS",
    "ModelError",
    "Precision",
    "Session",
    "SessionOptions",
    "TensorSpec",
    "available_backends",
    "check_inputs",
    "open_session",
]

#: Tensor element types a model may declare, as numpy dtype names.
DTYPES: Final = (
    "float32",
    "float16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)

Precision = Literal["fp32", "fp16", "int8"]
#: Numeric precisions of model artifacts (the bundle's ``precision``) and of session hints.
PRECISIONS: Final[tuple[Precision, ...]] = ("fp32", "fp16", "int8")

Dim = int | str | None


class ModelError(ValueError):
    """A model file that its backend cannot load or run (truncated, garbage, or a graph
    the backend rejects); the message names the file, on one line."""

    def __init__(self, path: str | Path, what: str, cause: BaseException | str) -> None:
        reason = str(cause).strip().splitlines()
        super().__init__(f"{path}: {what}: {reason[0] if reason else type(cause).__name__}")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    ``dtype`` is a numpy dtype name from ``DTYPES``. A dimension is an ``int`` when fixed,
    a ``str`` when dynamic and named (``"B"``, ``"T"``), ``None`` when dynamic and unnamed.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}"
            )
        for dim in self.shape:
            if dim is not None and not isinstance(dim, str) and not _is_size(dim):
                raise ValueError(
                    f"tensor {self.name!r}: dimension {dim!r} is not an int >= 0, a name or None"
                )

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}]"


def _is_size(dim: object) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """How a backend should run a model.

    ``threads``: intra-op threads (the device default is one). ``precision``: a hint for
    backends that choose their own compute precision (OpenVINO's inference precision);
    backends that run the graph's own types ignore it. ``extra``: backend-specific
    settings; each adapter documents its keys and rejects others.
    """

    threads: int = 1
    precision: Precision | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"SessionOptions.threads must be an int >= 1, got {self.threads!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(
                f"SessionOptions.precision must be one of {', '.join(PRECISIONS)} or None, "
                f"got {self.precision!r}"
            )


@runtime_checkable
class Session(Protocol):
    """A loaded model: declared I/O, and ``run`` from named arrays to named arrays."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; returns every output by name."""
        ...


@dataclass(frozen=True)
class _Backend:
    factory: str  # "module:attribute", imported on first use
    install: str  # what to ``pip install`` when the import fails


_BACKENDS: Final[dict[str, _Backend]] = {
    "onnxruntime": _Backend("edgetok.runtime.onnxruntime:OnnxRuntimeSession", "onnxruntime"),
    "openvino": _Backend("edgetok.runtime.openvino:OpenVinoSession", "openvino"),
    "litert": _Backend("edgetok.runtime.litert:LiteRtSession", "ai-edge-litert"),
    "tensorrt": _Backend(
        "edgetok.runtime.tensorrt:TensorRtSession", "tensorrt cuda-python (JetPack ships both)"
    ),
}


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> ``None`` when it imports here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    for name in _BACKENDS:
        try:
            _factory(name)
        except ImportError as exc:
            status[name] = str(exc)
        else:
            status[name] = None
    return status


def _factory(name: str) -> Any:
    backend = _BACKENDS[name]
    module_name, attribute = backend.factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"backend {name!r} cannot be imported here ({exc}); "
            f"install it with: pip install '{backend.install}'"
        ) from exc
    return getattr(module, attribute)


def open_session(
    path: str | Path, backend: str = "onnxruntime", *, options: SessionOptions | None = None
) -> Session:
    """Load the model at ``path`` with ``backend``.

    Raises ``ValueError`` for an unknown backend (listing the known ones),
    ``FileNotFoundError`` for a missing model file, ``ImportError`` naming what to
    install when the backend's package is not installed, and ``ModelError`` when the
    backend cannot load the file.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(_BACKENDS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (backend {backend!r})")
    factory = _factory(backend)
    try:
        return factory(path, options=options or SessionOptions())
    except RuntimeError as exc:  # OpenVINO's and TensorRT's errors for a file they reject
        raise ModelError(path, f"{backend} cannot load the model", exc) from None


def check_inputs(
    inputs: Mapping[str, Any], specs: Sequence[TensorSpec], *, model: str | Path
) -> None:
    """Check names, array type, dtype, rank and fixed dimensions of ``inputs``.

    Raises ``ValueError`` naming ``model`` and the offending input. Every adapter calls
    this before running, so all backends reject bad inputs with the same message.
    """
    expected = {spec.name: spec for spec in specs}
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise ValueError(
            f"{model}: missing input(s) {', '.join(missing)}; the model takes "
            f"{'; '.join(str(s) for s in specs)}"
        )
    extra = [name for name in inputs if name not in expected]
    if extra:
        raise ValueError(
            f"{model}: unexpected input(s) {', '.join(extra)}; the model takes "
            f"{'; '.join(str(s) for s in specs)}"
        )
    for name, value in inputs.items():
        spec = expected[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{model}: input {name!r} must be a numpy array, got {type(value).__name__}"
            )
        if value.dtype != np.dtype(spec.dtype):
            raise ValueError(f"{model}: input {name!r} has dtype {value.dtype}, expected {spec}")
        if value.ndim != len(spec.shape):
            raise ValueError(
                f"{model}: input {name!r} has rank {value.ndim} (shape {value.shape}), "
                f"expected {spec}"
            )
        for axis, (size, dim) in enumerate(zip(value.shape, spec.shape, strict=True)):
            if isinstance(dim, int) and size != dim:
                raise ValueError(
                    f"{model}: input {name!r} has size {size} on axis {axis} "
                    f"(shape {value.shape}), expected {spec}"
                )
