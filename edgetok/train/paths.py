"""Where corpora, feature caches, token caches and checkpoints live (outside the repo)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGETOK_CACHE`` or ``~/.cache/edgetok``."""
    return Path(os.environ.get("EDGETOK_CACHE", Path.home() / ".cache" / "edgetok"))


def features_dir(corpus_dir: Path, split: str) -> Path:
    """Log-mel cache of one split of a corpus."""
    return cache_dir() / "features" / corpus_dir.name / split


def runs_dir() -> Path:
    """Parent of every training run directory."""
    return cache_dir() / "runs"
