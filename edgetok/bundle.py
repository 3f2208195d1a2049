"""The model bundle: a directory with ``bundle.toml`` and the files it names.

``bundle.toml`` (``schema_version = 1``) has these tables; every key is checked for type,
and an unknown key is an error that names it and its table::

    [bundle]            name, schema_version, created (ISO 8601 string),
                        description = "", target = "default"
    [audio]             sample_rate (Hz)
    [frontend]          n_fft, win_length, hop_length, n_mels, f_min, f_max, log_floor, mel_scale
    [tokens]            rate_hz, vocab_size (K), codebook_file, codebook_sha256
    [segmenter]         global_threshold (optional), relative_threshold (optional),
                        min_len, max_len (tokens), target_hz
    [text]              optional (v2): vocabulary_file, vocabulary_sha256, the server
                        decoder's BPE vocabulary (``edgetok.bpe``)
    [segment_codes]     optional: file, sha256, stages (M), size (K): the residual VQ
                        codebooks float32 [M, K, D] of wire v2 (``edgetok.segment_codes``)
    [models.<role>]     one per role in MODEL_ROLES (at least one):
                        file, backend, precision, sha256, inputs, outputs; inputs and
                        outputs are lists of {name, dtype, shape}, a dynamic dimension a
                        name ("T") or "?"; optional external_file, external_sha256:
                        the model's ONNX external data, shipped beside it, or with
                        external_source rebuilt from a pinned pretrained wheel
                        ("tiny.en:decoder/embeddings/weight") when the model is opened,
                        never committed; optional source_sha256: the FP32 model a built
                        one was compiled from
    [training] [eval]   free-form: nested tables of strings, numbers, booleans and
                        lists of those

Values are checked against their allowed ranges: the sample rate one edgetok reads
audio at (``SAMPLE_RATES``), finite numbers, positive sizes and rates, min_len <= max_len,
a token rate that divides the frontend's frame rate, a target rate the segmenter can reach.
File names are relative to the bundle directory. ``load_bundle`` refuses a file (model,
external data, codebook, vocabulary) that is a symbolic link or lies under one, checks that
every file exists, that the codebook is float32 [vocab_size, D], and (unless
``verify=False``) that every sha256 matches; errors name the manifest, table, key and file.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from types import UnionType
from typing import Any, ClassVar, Final, TypeVar, get_args, get_type_hints

import numpy as np

from edgetok.runtime import PRECISIONS, Session, SessionOptions, TensorSpec, open_session

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (e.g. JetPack 6): the same parser, from PyPI
    import tomli as tomllib

__all__ = [
    "MANIFEST_NAME",
    "MODEL_ROLES",
    "SAMPLE_RATES",
    "SCHEMA_VERSION",
    "AudioSection",
    "Bundle",
    "BundleError",
    "BundleMeta",
    "FrontendSection",
    "ModelEntry",
    "SegmentCodesSection",
    "SegmenterSection",
    "TextSection",
    "TokensSection",
    "V1_ROLES",
    "default_bundle_path",
    "load_bundle",
    "manifest_of",
    "sha256_file",
    "write_bundle",
]

SCHEMA_VERSION: Final = 1
#: The audio sample rates edgetok reads audio at and runs its VAD on (``edgetok.audio``
#: ``SAMPLE_RATE``, silero-vad's 16 kHz): what ``[audio] sample_rate`` may say.
SAMPLE_RATES: Final = (16000,)
MANIFEST_NAME: Final = "bundle.toml"
#: The models a bundle can hold, in pipeline order; ``[models.<role>]`` tables. The
#: ``decoder`` is one graph with a key/value cache (inputs ``prefix``, ``text``,
#: ``past_keys``, ``past_values``; outputs ``logits``, ``keys``, ``values``): prefill and
#: per-character steps share its weights. A decoder without the cache inputs (``prefix``,
#: ``text`` -> ``logits``; older bundles, fixed-window builds) still loads and decodes by
#: rerunning the whole sequence per character. A v2 bundle's server decoder is two graphs
#: instead (``edgetok.whisper_decoding``): ``decoder_context`` (segment vectors -> every
#: layer's cross-attention keys/values) and ``decoder_step`` (BPE tokens with a
#: self-attention cache), with the ``[text]`` vocabulary; an optional ``token_reader``
#: (token ids -> estimated encoder frames) lets the server read the token wire.
MODEL_ROLES: Final = (
    "tokenizer",
    "entropy_lm",
    "aggregator",
    "decoder",
    "decoder_context",
    "decoder_step",
    "token_reader",
)

#: The four models of a v1 bundle (the character decoder): what ``edgetok build`` compiles.
V1_ROLES: Final = MODEL_ROLES[:4]

#: The longest segment ``[segmenter] max_len`` may allow, in tokens (the aggregator pads
#: every segment to max_len: 10 s of 50 Hz tokens).
MAX_SEGMENT_TOKENS: Final = 500

_REQUIRED_TABLES: Final = ("bundle", "audio", "frontend", "tokens", "segmenter", "models")
_OPTIONAL_TABLES: Final = ("text", "segment_codes")
_FREE_FORM_TABLES: Final = ("training", "eval")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KIND_NAMES: Final = {int: "an integer", float: "a number", str: "a string"}

_S = TypeVar("_S", bound="_Section")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file, table and key."""


def _where(section: str, key: str | None = None) -> str:
    return f"[{section}]" if key is None else f"[{section}] {key}"


def _table(data: Any, where: str, known: Iterable[str]) -> dict[str, Any]:
    """``data`` as a dict, after checking that it is a table without unknown keys."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a table, got {data!r}")
    known = tuple(known)
    for key in data:
        if key not in known:
            raise BundleError(f"{where} {key}: unknown key; known keys: {', '.join(known)}")
    return data


def _coerce(value: Any, kind: type, where: str) -> Any:
    """``value`` checked to be ``kind`` (an int is accepted, as float, for a float)."""
    if isinstance(value, bool):  # a bool is an int to Python, never to a manifest
        raise BundleError(f"{where}: expected {_KIND_NAMES[kind]}, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if isinstance(value, kind):
        return value
    raise BundleError(f"{where}: expected {_KIND_NAMES[kind]}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class _Section:
    """A manifest table whose keys are this dataclass's fields (int, float, str, X | None)."""

    SECTION: ClassVar[str]
    # Fields that are not plain scalars: name -> parser(value, where).
    _PARSERS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {}

    @classmethod
    def from_dict(cls: type[_S], data: Mapping[str, Any], *, section: str | None = None) -> _S:
        """Parse and validate one table; ``section`` names it in errors."""
        section = section or cls.SECTION
        data = _table(data, _where(section), (f.name for f in fields(cls)))
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            where = _where(section, f.name)
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise BundleError(f"{where}: missing required key")
                continue
            if f.name in cls._PARSERS:
                values[f.name] = cls._PARSERS[f.name](data[f.name], where)
                continue
            kind = hints[f.name]
            if isinstance(kind, UnionType):  # X | None
                kind = next(arg for arg in get_args(kind) if arg is not type(None))
            values[f.name] = _coerce(data[f.name], kind, where)
            if kind is float and not math.isfinite(values[f.name]):
                raise BundleError(f"{where}: {values[f.name]!r} is not a finite number")
        result = cls(**values)
        result._validate(section)
        return result

    def to_dict(self) -> dict[str, Any]:
        """The table as TOML-ready values (absent optional keys left out)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def _validate(self, section: str) -> None:
        """Check values (types are already checked); raise ``BundleError``."""

    def _require(self, ok: bool, section: str, key: str, problem: str) -> None:
        if not ok:
            raise BundleError(f"{_where(section, key)}: {getattr(self, key)!r} {problem}")

    def _positive(self, section: str, *keys: str) -> None:
        for key in keys:
            self._require(getattr(self, key) > 0, section, key, "must be > 0")

    def _relative_file(self, section: str, key: str) -> None:
        path = PurePosixPath(getattr(self, key))
        ok = bool(path.parts) and not path.is_absolute() and ".." not in path.parts
        self._require(ok, section, key, "must be a file name relative to the bundle directory")

    def _sha256(self, section: str, key: str) -> None:
        ok = _SHA256.fullmatch(getattr(self, key)) is not None
        self._require(ok, section, key, "is not a sha256 (64 lowercase hex digits)")


@dataclass(frozen=True, kw_only=True)
class BundleMeta(_Section):
    """``[bundle]``: identity of the bundle."""

    SECTION: ClassVar[str] = "bundle"
    name: str
    schema_version: int = SCHEMA_VERSION
    created: str
    """When the bundle was built, ISO 8601."""
    description: str = ""
    target: str = "default"
    """The target profile it was built for ("default", "x86-cpu", "rpi", ...)."""

    def _validate(self, section: str) -> None:
        self._require(bool(self.name), section, "name", "must not be empty")


@dataclass(frozen=True, kw_only=True)
class AudioSection(_Section):
    """``[audio]``: the input audio the models expect (mono float32)."""

    SECTION: ClassVar[str] = "audio"
    sample_rate: int

    def _validate(self, section: str) -> None:
        self._require(
            self.sample_rate in SAMPLE_RATES,
            section,
            "sample_rate",
            f"is not a sample rate edgetok reads audio at ({', '.join(map(str, SAMPLE_RATES))})",
        )


@dataclass(frozen=True, kw_only=True)
class FrontendSection(_Section):
    """``[frontend]``: the log-mel recipe (see ``edgetok.frontend``)."""

    SECTION: ClassVar[str] = "frontend"
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    log_floor: float
    mel_scale: str | None = None
    """``slaney`` (Whisper's filters); absent: ``htk`` (the v1 bundles)."""

    @classmethod
    def of_recipe(cls, recipe: Any) -> FrontendSection:
        """The section recording ``recipe`` (an ``edgetok.frontend.FrontendConfig``)."""
        values = {f.name: getattr(recipe, f.name) for f in fields(cls)}
        if values["mel_scale"] == "htk":
            values["mel_scale"] = None
        return cls(**values)

    def _validate(self, section: str) -> None:
        self._positive(section, "n_fft", "win_length", "hop_length", "n_mels", "log_floor")
        self._require(self.win_length <= self.n_fft, section, "win_length", "must be <= n_fft")
        self._require(self.hop_length <= self.n_fft, section, "hop_length", "must be <= n_fft")
        bins = self.n_fft // 2 + 1
        self._require(
            self.n_mels <= bins, section, "n_mels", f"must be <= the n_fft's {bins} frequency bins"
        )
        self._require(self.f_min >= 0, section, "f_min", "must be >= 0")
        self._require(self.f_max > self.f_min, section, "f_max", "must be > f_min")
        self._require(
            self.mel_scale in (None, "htk", "slaney"), section, "mel_scale", "must be htk or slaney"
        )


@dataclass(frozen=True, kw_only=True)
class TokensSection(_Section):
    """``[tokens]``: the token stream and the codebook that defines it."""

    SECTION: ClassVar[str] = "tokens"
    rate_hz: float
    vocab_size: int
    codebook_file: str
    """float32 [vocab_size, D] ``.npy``: nearest centroid gives the token id."""
    codebook_sha256: str

    def _validate(self, section: str) -> None:
        self._positive(section, "rate_hz", "vocab_size")
        self._relative_file(section, "codebook_file")
        self._sha256(section, "codebook_sha256")


@dataclass(frozen=True, kw_only=True)
class TextSection(_Section):
    """``[text]`` (v2): the BPE vocabulary the server decoder writes."""

    SECTION: ClassVar[str] = "text"
    vocabulary_file: str
    """One token per line, line i is id i (``edgetok.bpe.BpeVocabulary``)."""
    vocabulary_sha256: str

    def _validate(self, section: str) -> None:
        self._relative_file(section, "vocabulary_file")
        self._sha256(section, "vocabulary_sha256")


@dataclass(frozen=True, kw_only=True)
class SegmentCodesSection(_Section):
    """``[segment_codes]``: the wire's residual VQ codebooks (protocol v2)."""

    SECTION: ClassVar[str] = "segment_codes"
    file: str
    """float32 [stages, size, D] ``.npy`` (``edgetok.segment_codes.SegmentCodes``)."""
    sha256: str
    stages: int
    size: int

    def _validate(self, section: str) -> None:
        self._relative_file(section, "file")
        self._sha256(section, "sha256")
        self._positive(section, "stages", "size")
        self._require(
            self.size >= 2 and self.size & (self.size - 1) == 0 and self.size <= 65536,
            section,
            "size",
            f"{self.size} is not a power of two in 2..65536",
        )


@dataclass(frozen=True, kw_only=True)
class SegmenterSection(_Section):
    """``[segmenter]``: entropy segmentation; a threshold left out is a rule not used."""

    SECTION: ClassVar[str] = "segmenter"
    global_threshold: float | None = None
    relative_threshold: float | None = None
    min_len: int
    max_len: int
    target_hz: float
    """The segment rate the thresholds were solved for."""

    def _validate(self, section: str) -> None:
        self._positive(section, "min_len", "target_hz")
        self._require(self.max_len >= self.min_len, section, "max_len", "must be >= min_len")
        self._require(
            self.max_len <= MAX_SEGMENT_TOKENS,
            section,
            "max_len",
            f"must be <= {MAX_SEGMENT_TOKENS} tokens",
        )


def _parse_specs(value: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise BundleError(f"{where}: expected a non-empty list of {{name, dtype, shape}} tables")
    specs = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        item = _table(item, at, ("name", "dtype", "shape"))
        missing = [key for key in ("name", "dtype", "shape") if key not in item]
        if missing:
            raise BundleError(f"{at} {missing[0]}: missing required key")
        name = _coerce(item["name"], str, f"{at} name")
        dtype = _coerce(item["dtype"], str, f"{at} dtype")
        shape = item["shape"]
        if not isinstance(shape, list):
            raise BundleError(f"{at} shape: expected a list, got {shape!r}")
        try:
            specs.append(TensorSpec(name, dtype, tuple(None if d == "?" else d for d in shape)))
        except ValueError as exc:
            raise BundleError(f"{at}: {exc}") from None
    return tuple(specs)


def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dtype": spec.dtype,
        "shape": ["?" if dim is None else dim for dim in spec.shape],
    }


_EXTERNAL_KEYS: Final = ("external_file", "external_sha256", "external_source")


@dataclass(frozen=True, kw_only=True)
class ModelEntry(_Section):
    """``[models.<role>]``: one model artifact and its declared I/O."""

    SECTION: ClassVar[str] = "models"
    _PARSERS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        "inputs": _parse_specs,
        "outputs": _parse_specs,
    }
    file: str
    backend: str
    """Registered name in ``edgetok.runtime`` ("onnxruntime", ...)."""
    precision: str
    """One of ``edgetok.runtime.PRECISIONS``."""
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source_sha256: str | None = None
    """The FP32 model this one was compiled from (``edgetok build``); None for a source."""
    external_file: str | None = None
    """The model's ONNX external data (weights kept out of its file)."""
    external_sha256: str | None = None
    external_source: str | None = None
    """``<pretrained model>:<variable>`` (``edgetok.pretrained.pretrained_bytes``): the
    external data is not shipped but rebuilt from it on ``Bundle.open``; None: shipped."""

    @classmethod
    def fp32_onnx(cls, path: Path) -> ModelEntry:
        """The entry of the FP32 ONNX model at ``path`` (named relative to its directory),
        its I/O as an ONNX Runtime session declares it."""
        session = open_session(path)
        return cls(
            file=path.name,
            backend="onnxruntime",
            precision="fp32",
            sha256=sha256_file(path),
            inputs=tuple(session.inputs),
            outputs=tuple(session.outputs),
        )

    def to_dict(self) -> dict[str, Any]:
        """The table as TOML-ready values."""
        data = super().to_dict()
        data["inputs"] = [_spec_to_dict(spec) for spec in self.inputs]
        data["outputs"] = [_spec_to_dict(spec) for spec in self.outputs]
        return data

    def _validate(self, section: str) -> None:
        self._relative_file(section, "file")
        self._require(bool(self.backend), section, "backend", "must not be empty")
        self._require(
            self.precision in PRECISIONS,
            section,
            "precision",
            f"is not one of {', '.join(PRECISIONS)}",
        )
        self._sha256(section, "sha256")
        if self.source_sha256 is not None:
            self._sha256(section, "source_sha256")
        has = {key: getattr(self, key) is not None for key in _EXTERNAL_KEYS}
        for key, needs in (
            ("external_file", "external_sha256"),
            ("external_sha256", "external_file"),
            ("external_source", "external_file"),
        ):
            self._require(not has[key] or has[needs], section, key, f"needs {needs} too")
        if has["external_file"]:
            self._relative_file(section, "external_file")
            self._sha256(section, "external_sha256")

    @property
    def ships_external(self) -> bool:
        """Whether the model's external data is a file of the bundle (not rebuilt)."""
        return self.external_file is not None and self.external_source is None


def _free_form(value: Any, section: str, keys: tuple[str, ...] = ()) -> Any:
    """Check a ``[training]``/``[eval]`` value: tables, str/num/bool and lists of those."""
    where = _where(section, ".".join(keys) or None)
    if isinstance(value, dict):
        return {key: _free_form(item, section, (*keys, key)) for key, item in value.items()}
    if not keys:
        raise BundleError(f"{where}: expected a table, got {value!r}")
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, (str, int, float)):
                raise BundleError(f"{where}: lists may hold strings, numbers and booleans only")
        return list(value)
    if not isinstance(value, (str, int, float)):
        raise BundleError(
            f"{where}: {value!r} is not a string, number or boolean (write dates as strings)"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """A parsed ``bundle.toml``; ``root`` is its directory once loaded from disk."""

    meta: BundleMeta
    audio: AudioSection
    frontend: FrontendSection
    tokens: TokensSection
    segmenter: SegmenterSection
    models: dict[str, ModelEntry]
    """Role (from ``MODEL_ROLES``) -> model, in pipeline order."""
    text: TextSection | None = None
    segment_codes: SegmentCodesSection | None = None
    training: dict[str, Any] = field(default_factory=dict)
    """Free-form: how the models were trained (corpus, steps, ...)."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Free-form: measured quality (WER, rates, ...)."""
    root: Path | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bundle:
        """Parse and validate a whole manifest (as ``tomllib`` returns it)."""
        if not isinstance(data, dict):
            raise BundleError(f"expected a table, got {data!r}")
        meta = data.get("bundle")
        if not isinstance(meta, dict):
            problem = "missing table" if meta is None else f"expected a table, got {meta!r}"
            raise BundleError(f"[bundle]: {problem}")
        # The version first: a newer manifest gets this message, not "unknown key".
        if "schema_version" not in meta:
            raise BundleError("[bundle] schema_version: missing required key")
        version = _coerce(meta["schema_version"], int, "[bundle] schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"[bundle] schema_version: {version} is not supported; "
                f"this edgetok reads schema_version {SCHEMA_VERSION}"
            )
        known = _REQUIRED_TABLES + _OPTIONAL_TABLES + _FREE_FORM_TABLES
        for key in data:
            if key not in known:
                raise BundleError(f"[{key}]: unknown table; known tables: {', '.join(known)}")
        for section in _REQUIRED_TABLES:
            if section not in data:
                raise BundleError(f"[{section}]: missing table")
        models = _table(data["models"], "[models]", MODEL_ROLES)
        if not any(role in models for role in MODEL_ROLES):
            raise BundleError(f"[models]: no model; roles: {', '.join(MODEL_ROLES)}")
        bundle = cls(
            meta=BundleMeta.from_dict(meta),
            audio=AudioSection.from_dict(data["audio"]),
            frontend=FrontendSection.from_dict(data["frontend"]),
            tokens=TokensSection.from_dict(data["tokens"]),
            segmenter=SegmenterSection.from_dict(data["segmenter"]),
            models={
                role: ModelEntry.from_dict(models[role], section=f"models.{role}")
                for role in MODEL_ROLES
                if role in models
            },
            text=TextSection.from_dict(data["text"]) if "text" in data else None,
            segment_codes=(
                SegmentCodesSection.from_dict(data["segment_codes"])
                if "segment_codes" in data
                else None
            ),
            training=_free_form(data.get("training", {}), "training"),
            eval=_free_form(data.get("eval", {}), "eval"),
        )
        bundle._check_rates()
        return bundle

    def _check_rates(self) -> None:
        """The rates of different tables agree: the frontend's band within Nyquist, the
        token rate a whole division of the frame rate, at most that many segments/s."""
        rate = self.audio.sample_rate
        if self.frontend.f_max > rate / 2:
            raise BundleError(
                f"[frontend] f_max: {self.frontend.f_max} is above the Nyquist frequency "
                f"of [audio] sample_rate {rate}"
            )
        frame_hz = rate / self.frontend.hop_length
        stride = frame_hz / self.tokens.rate_hz
        if stride < 1 or not math.isclose(stride, round(stride), rel_tol=1e-6):
            raise BundleError(
                f"[tokens] rate_hz: {self.tokens.rate_hz} is not the frame rate {frame_hz:g} Hz "
                "([audio] sample_rate / [frontend] hop_length) divided by a whole number"
            )
        most = self.tokens.rate_hz / self.segmenter.min_len
        if self.segmenter.target_hz > most:
            raise BundleError(
                f"[segmenter] target_hz: {self.segmenter.target_hz} is above {most:g}, the "
                "most segments per second ([tokens] rate_hz / min_len)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The manifest as TOML-ready nested dicts (``root`` is not part of it)."""
        data: dict[str, Any] = {
            "bundle": self.meta.to_dict(),
            "audio": self.audio.to_dict(),
            "frontend": self.frontend.to_dict(),
            "tokens": self.tokens.to_dict(),
            "segmenter": self.segmenter.to_dict(),
            "models": {role: entry.to_dict() for role, entry in self.models.items()},
        }
        if self.text is not None:
            data["text"] = self.text.to_dict()
        if self.segment_codes is not None:
            data["segment_codes"] = self.segment_codes.to_dict()
        if self.training:
            data["training"] = self.training
        if self.eval:
            data["eval"] = self.eval
        return data

    @property
    def manifest_path(self) -> Path:
        """The ``bundle.toml`` this bundle was loaded from."""
        return self._root() / MANIFEST_NAME

    @property
    def codebook_path(self) -> Path:
        """Path of the codebook ``.npy``."""
        return self._root() / self.tokens.codebook_file

    @property
    def vocabulary_path(self) -> Path:
        """Path of the server decoder's BPE vocabulary (a v2 bundle's ``[text]``)."""
        if self.text is None:
            raise BundleError(f"bundle {self.meta.name!r} has no [text] vocabulary")
        return self._root() / self.text.vocabulary_file

    @property
    def segment_codes_path(self) -> Path:
        """Path of the wire's codebooks (``[segment_codes]``)."""
        if self.segment_codes is None:
            raise BundleError(f"bundle {self.meta.name!r} has no [segment_codes]")
        return self._root() / self.segment_codes.file

    def path_of(self, role: str) -> Path:
        """Path of the model file for ``role``."""
        return self._root() / self._entry(role).file

    def external_path_of(self, role: str) -> Path | None:
        """Path of ``role``'s ONNX external data (shipped, or rebuilt on ``open``); None
        for a model without."""
        file = self._entry(role).external_file
        return None if file is None else self._root() / file

    def open(
        self, role: str, *, backend: str | None = None, options: SessionOptions | None = None
    ) -> Session:
        """Open the ``role`` model with its manifest backend (or ``backend``).

        The manifest's precision becomes the session's precision hint unless ``options``
        sets one. The model's I/O must match the manifest's (names, dtypes, ranks, fixed
        dimensions), else ``BundleError``.
        """
        entry = self._entry(role)
        if entry.external_source is not None:
            self._ensure_external(role, entry)
        options = options or SessionOptions()
        if options.precision is None:
            options = replace(options, precision=entry.precision)
        session = open_session(self.path_of(role), backend or entry.backend, options=options)
        for key, declared, actual in [
            ("inputs", entry.inputs, session.inputs),
            ("outputs", entry.outputs, session.outputs),
        ]:
            if not _same_io(declared, actual):
                raise BundleError(
                    f"{self.manifest_path} [models.{role}] {key}: manifest says "
                    f"{'; '.join(map(str, declared))}, model {entry.file} has "
                    f"{'; '.join(map(str, actual))}"
                )
        return session

    def _ensure_external(self, role: str, entry: ModelEntry) -> None:
        """Write ``role``'s external data from its pretrained source unless it is there
        with the manifest's sha256 (the first ``open`` on a fresh install)."""
        path = self._root() / str(entry.external_file)
        where = f"{self.manifest_path} [models.{role}]"
        if path.is_file() and sha256_file(path) == entry.external_sha256:
            return
        from edgetok.pretrained import PretrainedError, pretrained_bytes

        try:
            data = pretrained_bytes(str(entry.external_source))
        except (PretrainedError, KeyError, ValueError) as exc:
            raise BundleError(
                f"{where}: its {entry.external_file} is not shipped but rebuilt on first use "
                f"from {entry.external_source}: {exc}"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.external_sha256:
            raise BundleError(
                f"{where} external_sha256: {entry.external_source} has sha256 {actual}, "
                f"manifest says {entry.external_sha256}"
            )
        temporary = path.with_name(f".{path.name}.part")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def _root(self) -> Path:
        if self.root is None:
            raise BundleError(f"bundle {self.meta.name!r} has no directory; use load_bundle()")
        return self.root

    def _entry(self, role: str) -> ModelEntry:
        if role not in MODEL_ROLES:
            raise ValueError(f"unknown model role {role!r}; roles: {', '.join(MODEL_ROLES)}")
        if role not in self.models:
            raise BundleError(f"bundle {self.meta.name!r} has no [models.{role}]")
        return self.models[role]


def _same_io(declared: Iterable[TensorSpec], actual: Iterable[TensorSpec]) -> bool:
    """Same names, dtypes and ranks; fixed dimensions equal where both are fixed."""
    by_name = {spec.name: spec for spec in actual}
    declared = list(declared)
    if sorted(by_name) != sorted(spec.name for spec in declared):
        return False
    for spec in declared:
        other = by_name[spec.name]
        if spec.dtype != other.dtype or len(spec.shape) != len(other.shape):
            return False
        for a, b in zip(spec.shape, other.shape, strict=True):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return False
    return True


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(path: str | Path) -> Path:
    """The manifest of the bundle at ``path``: its directory or its ``bundle.toml``."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load the bundle at ``path`` (its directory or its ``bundle.toml``).

    Parses and validates the manifest, checks that every file exists, that the codebook is
    float32 [vocab_size, D], and, when ``verify``, every sha256. Raises ``BundleError``.
    """
    manifest = manifest_of(path)
    if not manifest.is_file():
        raise BundleError(f"no bundle at {path}: {manifest} not found")
    try:
        with open(manifest, "rb") as file:
            data = tomllib.load(file)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest}: not valid TOML: {exc}") from None
    try:
        bundle = replace(Bundle.from_dict(data), root=manifest.parent)
    except BundleError as exc:
        raise BundleError(f"{manifest} {exc}") from None
    files = [
        (f"models.{role}", "file", "sha256", entry.file, entry.sha256)
        for role, entry in bundle.models.items()
    ]
    files += [
        (
            f"models.{role}",
            "external_file",
            "external_sha256",
            entry.external_file,
            entry.external_sha256,
        )
        for role, entry in bundle.models.items()
        if entry.ships_external
    ]
    tokens = bundle.tokens
    files.append(
        ("tokens", "codebook_file", "codebook_sha256", tokens.codebook_file, tokens.codebook_sha256)
    )
    if bundle.text is not None:
        text = bundle.text
        files.append(
            (
                "text",
                "vocabulary_file",
                "vocabulary_sha256",
                text.vocabulary_file,
                text.vocabulary_sha256,
            )
        )
    if bundle.segment_codes is not None:
        codes = bundle.segment_codes
        files.append(("segment_codes", "file", "sha256", codes.file, codes.sha256))
    rebuilt = [
        (f"models.{role}", "external_file", entry.external_file)
        for role, entry in bundle.models.items()
        if entry.external_source is not None
    ]
    for section, file_key, name in [(f[0], f[1], f[3]) for f in files] + rebuilt:
        if link := _link_in(manifest.parent, str(name)):
            raise BundleError(
                f"{manifest} [{section}] {file_key}: {link} is a symbolic link; a bundle's "
                "files must be regular files inside its directory"
            )
    for section, file_key, hash_key, name, expected in files:
        file_path = manifest.parent / name
        if not file_path.is_file():
            raise BundleError(
                f"{manifest} [{section}] {file_key}: file {name} not found in {manifest.parent}"
            )
        if verify:
            actual = sha256_file(file_path)
            if actual != expected:
                raise BundleError(
                    f"{manifest} [{section}] {hash_key}: file {name} has sha256 {actual}, "
                    f"manifest says {expected}"
                )
    _check_codebook(bundle, manifest)
    if bundle.segment_codes is not None:
        _check_segment_codes(bundle, manifest)
    return bundle


def _link_in(root: Path, name: str) -> str | None:
    """The first part of ``name`` (relative to ``root``) that is a symbolic link, as a
    path relative to ``root``; None when there is none."""
    path = root
    for part in PurePosixPath(name).parts:
        path = path / part
        if path.is_symlink():
            return path.relative_to(root).as_posix()
    return None


def _check_segment_codes(bundle: Bundle, manifest: Path) -> None:
    """The wire codebooks are float32 [stages, size, D] as declared, D the aggregator's."""
    codes = bundle.segment_codes
    assert codes is not None
    where = f"{manifest} [segment_codes] file"
    try:
        books = np.load(bundle.segment_codes_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{where}: {codes.file} is not a readable .npy file ({exc})") from None
    expected = (codes.stages, codes.size)
    if books.dtype != np.float32 or books.ndim != 3 or books.shape[:2] != expected:
        raise BundleError(
            f"{where}: {codes.file} is {books.dtype} {list(books.shape)}, expected float32 "
            f"[{codes.stages}, {codes.size}, D]"
        )
    aggregator = bundle.models.get("aggregator")
    vectors = [s for s in aggregator.outputs if s.name == "vectors"] if aggregator else []
    if vectors and books.shape[2] != vectors[0].shape[-1]:
        raise BundleError(
            f"{where}: {codes.file} has D = {books.shape[2]}, the aggregator's vectors "
            f"{vectors[0].shape[-1]}"
        )


def _check_codebook(bundle: Bundle, manifest: Path) -> None:
    name = bundle.tokens.codebook_file
    where = f"{manifest} [tokens] codebook_file"
    try:
        codebook = np.load(bundle.codebook_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{where}: {name} is not a readable .npy file ({exc})") from None
    if codebook.dtype != np.float32 or codebook.ndim != 2:
        raise BundleError(
            f"{where}: {name} is {codebook.dtype} {list(codebook.shape)}, expected float32 [K, D]"
        )
    if codebook.shape[0] != bundle.tokens.vocab_size:
        raise BundleError(
            f"{manifest} [tokens] vocab_size: {bundle.tokens.vocab_size}, but {name} has "
            f"{codebook.shape[0]} rows"
        )


def default_bundle_path() -> Path:
    """The bundle shipped inside the package (``edgetok/models/default``)."""
    path = Path(__file__).resolve().parent / "models" / "default"
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(
            f"the default bundle has not been built: {path / MANIFEST_NAME} does not exist; "
            "pass the path of a bundle directory"
        )
    return path


def write_bundle(bundle: Bundle, directory: str | Path) -> Path:
    """Validate ``bundle`` and write its ``bundle.toml`` into ``directory``; returns the path.

    Writes the manifest only: the files it names (with their sha256 from ``sha256_file``)
    are the caller's; ``load_bundle`` checks them.
    """
    data = bundle.to_dict()
    Bundle.from_dict(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST_NAME
    temporary = manifest.with_name(f".{MANIFEST_NAME}.tmp")
    temporary.write_text(_toml(data), encoding="utf-8")
    os.replace(temporary, manifest)
    return manifest


# A TOML writer for this schema: tables of scalars, lists and inline tables.


def _toml(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _toml_table(lines, data, ())
    return "\n".join(lines).strip() + "\n"


def _toml_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    values = {key: value for key, value in table.items() if not isinstance(value, dict)}
    tables = {key: value for key, value in table.items() if isinstance(value, dict)}
    if path and (values or not tables):
        lines.append(f"[{'.'.join(map(_toml_key, path))}]")
    for key, value in values.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value, multiline=True)}")
    if values:
        lines.append("")
    for key, value in tables.items():
        _toml_table(lines, value, (*path, key))


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any, *, multiline: bool = False) -> str:
    """One TOML value; with ``multiline``, a list of several tables gets a line each."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan
    if isinstance(value, str):
        return _toml_string(value)
    if multiline and isinstance(value, list) and len(value) > 1 and isinstance(value[0], dict):
        return "[\n" + "".join(f"    {_toml_value(item)},\n" for item in value) + "]"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(_toml_value, value))}]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
    escapes["\r"] = "\\r"
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
