"""``build``: a bundle compiled for one target, with its parity report.

Steps: the target's profile names the backend and default precision; that backend's
compiler checks its toolchain and that it can compile this bundle's models (a
``ToolchainError`` or ``BuildError`` before any work); with INT8, a calibration set is
made from audio (cached under ``<out>/../.cache``); each device model
(``edgetok.stages.device_roles``: tokenizer, entropy LM, aggregator, and a v1 bundle's
character decoder) is compiled (with INT8, ``edgetok.quantize.int8_roles`` quantized, the others
FP32); a v2 bundle's server decoder graphs (``SERVER_ROLES``) are carried over unchanged
with their external data; the codebook, vocabulary and sample are copied;
``bundle.toml`` is written with the target, each model's backend and precision and
hash; then the built bundle is compared with the FP32 source on held-out audio
(``edgetok.targets.parity``), the tokenizer timed against the FP32 ONNX on the same backend
(``edgetok.targets.latency``), and the report stored as ``parity.json`` and as a summary in
``bundle.toml``'s ``[eval.parity]``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from edgetok.bundle import (
    MANIFEST_NAME,
    Bundle,
    ModelEntry,
    load_bundle,
    sha256_file,
    write_bundle,
)
from edgetok.calibration import CalibrationSet, Utterance, heldout_source, make_calibration, pick
from edgetok.calibration import read_source as read_audio_source
from edgetok.quantize import int8_roles
from edgetok.runtime import SessionOptions
from edgetok.stages import SERVER_DECODER_ROLES, SERVER_ROLES, device_roles
from edgetok.targets import load_profile
from edgetok.targets.compilers import ToolchainError, get_compiler

__all__ = ["BuildError", "BuildResult", "build", "default_calibration_source"]

PARITY_FILE: Final = "parity.json"
#: Marks a directory that ``build`` made, finished or not.
BUILD_MARKER: Final = ".edgetok-build"
#: Utterances for calibration and for the parity report (the held-out set is capped).
CALIBRATION_SIZE: Final = 32
HELDOUT_SIZE: Final = 40
#: Log-mel frames of the latency window (4 s).
LATENCY_FRAMES: Final = 400
_COPIED: Final = ("sample.wav",)

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to pass."""


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    report: dict[str, Any]

    @property
    def failed_checks(self) -> list[str]:
        """The parity thresholds the build missed (none when parity was not measured)."""
        return failed_checks(self.report)


def failed_checks(report: dict[str, Any]) -> list[str]:
    """The thresholds a parity report (``parity.json``) marks as missed."""
    return [name for name, ok in report.get("checks", {}).items() if ok is False]


def default_calibration_source(bundle: Bundle) -> Path | None:
    """The corpus the bundle was trained on, when it is in the edgetok cache here."""
    from edgetok.train.paths import cache_dir

    corpus = bundle.training.get("corpus", {})
    name = corpus.get("name") if isinstance(corpus, dict) else None
    path = cache_dir() / "corpus" / str(name) if name else None
    return path if path is not None and path.is_dir() else None


def _audio(
    source: Bundle, calib: Path | None, heldout: Path | None, *, int8: bool
) -> tuple[list[Utterance], list[Utterance]]:
    """(calibration utterances, held-out utterances); calibration audio is required only
    for INT8, held-out audio is taken where there is some."""
    calib = calib or default_calibration_source(source)
    if calib is None and int8:
        from edgetok.calibration.sources import synthetic_source

        try:
            calib = synthetic_source()
        except RuntimeError as exc:
            raise BuildError(
                f"no calibration audio and none can be synthesized here ({exc}): pass "
                "--calib with a corpus directory, a manifest (.jsonl) or a directory of "
                "audio files"
            ) from None
    heldout = heldout or (heldout_source(calib) if calib else None)
    try:
        chosen = pick(read_audio_source(calib), CALIBRATION_SIZE) if calib and int8 else []
        held = pick(read_audio_source(heldout), HELDOUT_SIZE) if heldout else []
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    return chosen, held


def _prepare(out_dir: Path) -> None:
    """An empty ``out_dir``; an existing one is replaced only when it holds a bundle or
    an unfinished build (its ``BUILD_MARKER``, written first, so a build that stopped
    half-way does not block the next)."""
    if out_dir.exists():
        ours = (out_dir / MANIFEST_NAME).is_file() or (out_dir / BUILD_MARKER).is_file()
        if any(out_dir.iterdir()) and not ours:
            raise BuildError(f"{out_dir} exists and is not a built bundle; choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / BUILD_MARKER).write_text("made by edgetok build\n", encoding="utf-8")


def _check_roles(source: Bundle) -> None:
    """A build needs the device pipeline and a server decoder (v1's character decoder or
    v2's two Whisper graphs)."""
    missing = [r for r in ("tokenizer", "entropy_lm", "aggregator") if r not in source.models]
    if "decoder" not in source.models:
        missing += [r for r in SERVER_DECODER_ROLES if r not in source.models]
    if missing:
        raise BuildError(f"{source.manifest_path}: a build needs every model; missing {missing}")


def _carry(source: Bundle, role: str, out_dir: Path) -> None:
    """Copy a server model unchanged, with its external data where the source has it (an
    absent one with an ``external_source`` is rebuilt when the built bundle opens it)."""
    entry = source.models[role]
    shutil.copy(source.path_of(role), out_dir / entry.file)
    external = source.external_path_of(role)
    if external is not None:
        if external.is_file():
            shutil.copy(external, out_dir / entry.external_file)
        elif entry.ships_external:
            raise BuildError(f"{source.manifest_path} [models.{role}]: {external} not found")


def _weights(out_dir: Path, file: str) -> str | None:
    """The file holding a compiled model's weights beside it (OpenVINO IR's ``.bin``
    beside its ``.xml``), hashed as the entry's external data; None for one file."""
    weights = Path(file).with_suffix(".bin")
    return weights.as_posix() if file.endswith(".xml") and (out_dir / weights).is_file() else None


def _manifest(source: Bundle, target: str, artifacts: dict, backend: str, out_dir: Path) -> Bundle:
    """The built bundle's manifest: compiled ``artifacts`` (one file, or OpenVINO IR whose
    ``.bin`` is its hashed external data), the server models as they are in ``source``."""
    models: dict[str, ModelEntry] = {}
    for role, entry in source.models.items():
        artifact = artifacts.get(role)
        if artifact is None:
            models[role] = entry
            continue
        weights = _weights(out_dir, artifact.file)
        models[role] = replace(
            entry,
            file=artifact.file,
            backend=backend,
            precision=artifact.precision,
            sha256=sha256_file(out_dir / artifact.file),
            source_sha256=entry.source_sha256 or entry.sha256,
            inputs=artifact.inputs or entry.inputs,
            outputs=artifact.outputs or entry.outputs,
            external_file=weights,
            external_sha256=sha256_file(out_dir / weights) if weights else None,
            external_source=None,
        )
    meta = replace(
        source.meta,
        target=target,
        description=f"{source.meta.description} Built for {target} ({backend}).".strip(),
    )
    return replace(source, meta=meta, models=models, root=None)


def _latency(source: Bundle, built: Bundle, held: list[Utterance]) -> dict[str, Any]:
    import numpy as np

    from edgetok.audio import load_audio
    from edgetok.frontend import log_mel
    from edgetok.stages import frontend_config
    from edgetok.targets.latency import tokenizer_latency

    if held:
        audio = np.concatenate([load_audio(u.path, source.audio.sample_rate) for u in held[:4]])
        mel = log_mel(audio, frontend_config(source))[None, :LATENCY_FRAMES]
    else:
        mel = np.random.default_rng(0).normal(-5, 3, (1, LATENCY_FRAMES, source.frontend.n_mels))
    return tokenizer_latency(source, built, mel.astype(np.float32))


def build(
    bundle_path: str | Path,
    target: str,
    out_dir: str | Path,
    *,
    int8: bool | None = None,
    backend: str | None = None,
    calib: str | Path | None = None,
    heldout: str | Path | None = None,
    progress: Progress = print,
) -> BuildResult:
    """Build the bundle at ``bundle_path`` for ``target`` into ``out_dir``.

    ``int8`` None takes the target profile's precision; ``backend`` None its backend
    (another must be one of its ``fallback_backends``). ``calib``: the audio to calibrate
    on (default: the bundle's training corpus in the edgetok cache); ``heldout``: the
    audio of the parity report (default: the ``test.jsonl`` that goes with ``calib``).
    Raises ``ToolchainError`` when the backend cannot be built here, ``BuildError`` for
    models the backend cannot compile, missing audio or an unusable output directory,
    ``BundleError`` for a bad bundle.
    """
    profile = load_profile(target)
    int8 = profile.precision == "int8" if int8 is None else int8
    backend = backend or profile.backend
    if backend not in (profile.backend, *profile.fallback_backends):
        raise BuildError(
            f"target {target} runs {', '.join((profile.backend, *profile.fallback_backends))}, "
            f"not {backend}"
        )
    compiler = get_compiler(backend)
    source = load_bundle(bundle_path)
    _check_roles(source)
    # What the backend cannot build at all comes before what is missing here.
    unsupported = compiler.unsupported(source)
    if unsupported is not None:
        raise BuildError(f"{backend} cannot build {source.meta.name!r}: {unsupported}")
    try:
        compiler.check()
    except ToolchainError as exc:
        others = [b for b in (profile.backend, *profile.fallback_backends) if b != backend]
        if not others:
            raise
        raise ToolchainError(
            f"{exc}; or build {target} for {' or '.join(others)} here: "
            f"edgetok build --target {target} --backend {others[0]}"
        ) from None
    out_dir = Path(out_dir)
    chosen, held = _audio(
        source, Path(calib) if calib else None, Path(heldout) if heldout else None, int8=int8
    )
    _prepare(out_dir)
    work_dir = out_dir.parent / ".work" / out_dir.name
    shutil.rmtree(work_dir, ignore_errors=True)
    calibration: CalibrationSet | None = None
    if int8:
        progress(f"calibration: {len(chosen)} utterances through the FP32 models")
        calibration = make_calibration(source, chosen, out_dir.parent / ".cache" / "calibration")
    artifacts = {}
    roles, quantizable = device_roles(source), int8_roles(source)
    for i, role in enumerate(roles, 1):
        started = time.perf_counter()
        quantized = calibration is not None and role in quantizable
        progress(f"[{i}/{len(roles)}] {role}: {backend} {'int8' if quantized else 'fp32'}")
        artifacts[role] = compiler.compile(
            source,
            role,
            out_dir,
            int8=quantized,
            calib=calibration.reader(role) if quantized else None,
            work_dir=work_dir,
        )
        progress(f"      -> {artifacts[role].file} ({time.perf_counter() - started:.1f} s)")
    for role in SERVER_ROLES:
        if role in source.models:
            progress(f"      {role}: carried over (server side)")
            _carry(source, role, out_dir)
    shutil.copy(source.codebook_path, out_dir / source.tokens.codebook_file)
    if source.text is not None:
        shutil.copy(source.vocabulary_path, out_dir / source.text.vocabulary_file)
    if source.segment_codes is not None:  # the wire's codebooks, which the manifest keeps
        shutil.copy(source.segment_codes_path, out_dir / source.segment_codes.file)
    for name in _COPIED:
        if (source.manifest_path.parent / name).is_file():
            shutil.copy(source.manifest_path.parent / name, out_dir / name)
    write_bundle(_manifest(source, target, artifacts, backend, out_dir), out_dir)
    built = load_bundle(out_dir)

    progress(f"parity: {len(held)} held-out utterances, FP32 ONNX vs {target}")
    report: dict[str, Any] = {
        "target": target,
        "backend": backend,
        "precision": {role: a.precision for role, a in artifacts.items()},
        "calibration_utterances": len(chosen) if int8 else 0,
    }
    if held:
        from edgetok.targets.parity import checks, measure

        def tick(done: int, total: int) -> None:
            if done % 5 == 0 or done == total:
                progress(f"      {done}/{total} utterances")

        options = SessionOptions(threads=profile.threads)
        report.update(
            measure(
                source,
                built,
                held,
                options=options,
                progress=tick,
                cache_dir=out_dir.parent / ".cache" / "parity",
            )
        )
        report["checks"] = checks(report)
    else:
        report["note"] = "no held-out audio: parity not measured (pass --heldout)"
    report["latency"] = {"tokenizer": _latency(source, built, held)}
    (out_dir / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    # Only what was measured on this build: the source's [eval] numbers are not its own.
    write_bundle(replace(built, eval={"parity": _summary(report)}, root=None), out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return BuildResult(load_bundle(out_dir), report)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline numbers for ``[eval.parity]`` (TOML has no null)."""
    flat = {"target": report["target"]}
    if "models" in report:
        flat["token_agreement"] = report["models"]["tokenizer"]["token_agreement"]
        flat["entropy_mae"] = report["models"]["entropy_lm"]["entropy_mae"]
        flat["boundary_f1"] = report["pipeline"]["boundary_f1"]
        flat["wer_change"] = report["pipeline"]["wer_change"]
    flat["tokenizer_speedup"] = report["latency"]["tokenizer"]["speedup"]
    return {key: value for key, value in flat.items() if value is not None}
