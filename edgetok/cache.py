"""Where edgetok keeps what it builds outside the repository: ``$EDGETOK_CACHE``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGETOK_CACHE`` or ``~/.cache/edgetok``."""
    return Path(os.environ.get("EDGETOK_CACHE", Path.home() / ".cache" / "edgetok"))


#: The baseline decoders ``edgetok eval`` scores beside the entropy segments.
BASELINES = ("dense", "fixed")


def baseline_pack_dir(name: str, *, v2: bool) -> Path:
    """Where ``edgetok train export-baselines`` writes baseline ``name``'s decoder pack
    (the run of the same name: ``whisper_decoder_<name>`` for v2, ``decoder_<name>``)."""
    return cache_dir() / "exports" / baseline_run(name, v2=v2)


def baseline_run(name: str, *, v2: bool) -> str:
    """The training run of baseline ``name``."""
    return f"{'whisper_decoder' if v2 else 'decoder'}_{name}"
