"""Target profiles load from the packaged TOML files."""

from __future__ import annotations

import pytest

from edgetok.targets import load_profile, profile_names


def test_shipped_profiles() -> None:
    assert profile_names() == ["android", "jetson", "rpi", "x86-cpu"]


@pytest.mark.parametrize("name", ["android", "jetson", "rpi", "x86-cpu"])
def test_profile_fields(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.backend in {"onnxruntime", "openvino", "litert", "tensorrt"}
    assert profile.precision == "int8"
    assert profile.threads >= 1
    assert 0 < profile.real_time_factor < 1


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown target 'pi'.*rpi"):
        load_profile("pi")
