"""Target profiles: which backend, precision and threads a device class gets, and its budgets.

Profiles are the ``*.toml`` files beside this module; ``load_profile("rpi")`` reads one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib


@dataclass(frozen=True)
class TargetProfile:
    """One device class that ``edgetok build --target`` compiles for."""

    name: str
    description: str
    backend: str
    fallback_backends: tuple[str, ...]
    precision: str
    threads: int
    real_time_factor: float
    peak_rss_mb: int


def profile_names() -> list[str]:
    """Names of the shipped profiles, sorted."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_profile(name: str) -> TargetProfile:
    """Read ``<name>.toml``; a ValueError names the unknown target and lists the known ones."""
    if name not in profile_names():
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(profile_names())}")
    data = tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())
    target, budget = data["target"], data["budget"]
    return TargetProfile(
        name=target["name"],
        description=target["description"],
        backend=target["backend"],
        fallback_backends=tuple(target["fallback_backends"]),
        precision=target["precision"],
        threads=int(target["threads"]),
        real_time_factor=float(budget["real_time_factor"]),
        peak_rss_mb=int(budget["peak_rss_mb"]),
    )
