"""Packaging: bench/, targets/, quantize/ and calibration/ install under ``edgetok``.

The repository keeps them at its top level; pyproject.toml maps each to ``edgetok.<name>``
(``[tool.setuptools.package-dir]``) and lists every package. These tests read that
configuration against the folders, so a new subpackage cannot be left out of the wheel
and no generic top-level name (``bench``, ``targets``) can reach site-packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
MAPPED = ("bench", "calibration", "quantize", "targets")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools takes ``package`` from: its longest mapped prefix, else root."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def _package_folders() -> set[Path]:
    found = set()
    for top in ("edgetok", *MAPPED):
        found |= {
            p.parent for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts
        }
    return found


def test_every_package_installs_under_edgetok() -> None:
    config = _setuptools()
    packages, package_dir = config["packages"], config["package-dir"]
    assert all(p == "edgetok" or p.startswith("edgetok.") for p in packages)
    assert {package_dir[f"edgetok.{name}"] for name in MAPPED} == set(MAPPED)
    assert {_folder(p, package_dir) for p in packages} == _package_folders()


def test_target_profiles_ship_with_the_package() -> None:
    from edgetok.targets import profile_names

    data = _setuptools()["package-data"]["edgetok.targets"]
    assert data == ["*.toml"]
    assert profile_names() == sorted(p.stem for p in (ROOT / "targets").glob("*.toml"))
