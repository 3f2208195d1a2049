"""Where edgetok keeps what it builds outside the repository: ``$EDGETOK_CACHE``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGETOK_CACHE`` or ``~/.cache/edgetok``."""
    return Path(os.environ.get("EDGETOK_CACHE", Path.home() / ".cache" / "edgetok"))
