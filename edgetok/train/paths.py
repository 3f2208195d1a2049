"""Where corpora, feature caches, token caches and checkpoints live (outside the repo)."""

from __future__ import annotations

from pathlib import Path

from edgetok.cache import cache_dir

__all__ = ["cache_dir", "features_dir", "runs_dir"]


def features_dir(corpus_dir: Path, split: str) -> Path:
    """Log-mel cache of one split of a corpus."""
    return cache_dir() / "features" / corpus_dir.name / split


def runs_dir() -> Path:
    """Parent of every training run directory."""
    return cache_dir() / "runs"
