"""What a bench run measures: the configurations (a built bundle for a target, or why there
is none here) that ``edgetok bench --target T --compare ...`` names."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from edgetok.bundle import BundleError, default_bundle_path, load_bundle
from edgetok.runtime import available_backends

__all__ = ["DEVICE_MODELS", "Config", "find_configs"]

#: Model roles on the device, and the stage each one's time is counted in.
DEVICE_MODELS: Final = {
    "tokenizer": "tokenizer",
    "entropy_lm": "entropy_lm",
    "aggregator": "aggregator",
}


@dataclass(frozen=True)
class Config:
    """One thing to benchmark: a bundle for a target, or why there is none here."""

    target: str
    bundle: Path | None
    backend: str | None = None
    precision: str | None = None
    reason: str | None = None
    """Why it cannot run here (None when it can)."""
    label: str | None = None
    """Told apart from another build of the same target, backend and precision."""

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        parts = [self.target, self.backend, self.precision]
        name = "/".join(p for p in parts if p)
        return f"{name} ({self.label})" if self.label else name


def _backend_reasons() -> dict[str, str | None]:
    reasons = available_backends()
    if reasons.get("tensorrt") is None:
        try:
            from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

            error, count = cudart.cudaGetDeviceCount()
            if int(error) != 0 or count == 0:
                reasons["tensorrt"] = "TensorRT is installed but no CUDA GPU is visible"
        except Exception as exc:  # noqa: BLE001 - any failure means: cannot run here
            reasons["tensorrt"] = f"TensorRT is installed but CUDA is not usable ({exc})"
    return reasons


def _failed_parity(path: Path) -> list[str]:
    """The parity thresholds a built bundle missed, from its ``parity.json``."""
    from edgetok.targets.build import PARITY_FILE, failed_checks

    report = path / PARITY_FILE
    if not report.is_file():
        return []
    return failed_checks(json.loads(report.read_text(encoding="utf-8")))


def _artifacts(path: Path) -> tuple[str, ...]:
    """The sha256 of a bundle's device models, as its manifest states them."""
    bundle = load_bundle(path, verify=False)
    return tuple(bundle.models[r].sha256 for r in DEVICE_MODELS if r in bundle.models)


def _config_of(path: Path, target: str | None, reasons: dict[str, str | None]) -> Config:
    bundle = load_bundle(path, verify=False)
    device = [bundle.models[role] for role in DEVICE_MODELS if role in bundle.models]
    backends = sorted({entry.backend for entry in device})
    precisions = sorted({entry.precision for entry in device})
    backend = "+".join(backends)
    # An INT8 build keeps some models in float by recipe (quantize.INT8_ROLES): it is "int8".
    precision = "int8" if "int8" in precisions else "+".join(precisions)
    problems = [f"{b}: {reasons[b]}" for b in backends if reasons.get(b)]
    return Config(
        target=target or bundle.meta.target,
        bundle=bundle.manifest_path.parent,
        backend=backend,
        precision=precision,
        reason="; ".join(problems) or None,
    )


def find_configs(
    targets: Sequence[str],
    *,
    bundle: Path | None = None,
    build_dir: Path = Path("build"),
) -> list[Config]:
    """The configurations of ``targets``, in order.

    ``default`` is the bundle shipped with edgetok (FP32 ONNX Runtime). A target profile
    name (``x86-cpu``, ``android``, ...) is every bundle built for it under
    ``build_dir`` (``build/*/bundle.toml`` whose ``[bundle] target`` is it), each
    marked unavailable with the reason when its runtime cannot run here; a target with
    no build is one unavailable entry saying why (its runtimes missing, or not built).
    ``bundle`` replaces the search for the first target.
    """
    from edgetok.targets import load_profile, profile_names

    reasons = _backend_reasons()
    configs: list[Config] = []
    for i, target in enumerate(targets):
        if i == 0 and bundle is not None:
            configs.append(_config_of(Path(bundle), target, reasons))
            continue
        if target == "default":
            configs.append(_config_of(default_bundle_path(), "default", reasons))
            continue
        if target not in profile_names():
            known = ", ".join(["default", *profile_names()])
            raise ValueError(f"unknown target {target!r}; known targets: {known}")
        found: list[Config] = []
        seen: dict[tuple[str, ...], Path] = {}
        for manifest in sorted(build_dir.glob("*/bundle.toml")):
            try:
                config = _config_of(manifest.parent, None, reasons)
            except (BundleError, OSError) as exc:
                if manifest.parent.name.startswith(target):
                    reason = f"unreadable bundle: {exc}"
                    configs.append(Config(target, manifest.parent, reason=reason))
                continue
            if config.target != target:
                continue
            missed = _failed_parity(manifest.parent)
            if missed:
                reason = f"its parity check failed ({', '.join(missed)})"
                found.append(replace(config, reason=reason, label=manifest.parent.name))
                continue
            identity = _artifacts(manifest.parent)
            if identity in seen:  # the same models built twice: benchmark them once
                continue
            seen[identity] = manifest.parent
            if any(c.name == config.name for c in found):
                config = replace(config, label=manifest.parent.name)
            found.append(config)
        if found:
            configs.extend(found)
            continue
        profile = load_profile(target)
        backends = (profile.backend, *profile.fallback_backends)
        missing = [f"{b}: {reasons[b]}" for b in backends if reasons.get(b)]
        if len(missing) == len(backends):
            reason = "no runtime for it here (" + "; ".join(missing) + ")"
        else:
            reason = (
                f"not built: no bundle for {target} under {build_dir}/ "
                f"(run: edgetok build --target {target})"
            )
            if missing:
                reason += "; " + "; ".join(missing)
        configs.append(Config(target, None, backend=profile.backend, reason=reason))
    # Two bundles of one target, backend and precision (--bundle and --compare default):
    # told apart by their directory names.
    names = Counter(c.name for c in configs)
    return [
        replace(c, label=c.bundle.name)
        if names[c.name] > 1 and c.bundle is not None and c.label is None
        else c
        for c in configs
    ]
