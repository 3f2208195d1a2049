"""Numba, imported so that a read-only install still works.

``numba.njit(cache=True)`` writes its on-disk cache next to the source file
(``__pycache__``), else under ``~/.cache/numba``, or under ``NUMBA_CACHE_DIR`` when set
(read by numba when it is first imported). Where none of these is writable (a read-only
device image), decorating a function raises ``RuntimeError: cannot cache function ...
no locator available``. This module avoids that:

1. Before numba is imported: if ``NUMBA_CACHE_DIR`` is unset and this package's
   directory is not writable, ``NUMBA_CACHE_DIR`` is pointed at the first writable,
   private directory of ``$XDG_CACHE_HOME/edgetok/numba``, ``~/.cache/edgetok/numba``,
   ``<tempdir>/edgetok-numba-<uid>`` (created mode 0700; a directory owned by another
   user, or writable by group/others, is refused: numba's cache index is a pickle).
2. :func:`njit` compiles with ``cache=True, nogil=True`` by default; if numba still
   cannot find a cache location for a function, it compiles that function without a
   cache (slower first call, never a failure).

Import numba-using code through here: ``from edgetok.jit import njit``.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CACHE_DIR_SET_BY_EDGETOK", "cache_enabled", "njit", "numba"]

F = TypeVar("F", bound=Callable[..., Any])

_PACKAGE_DIR = Path(__file__).resolve().parent


def _dir_writable(path: Path) -> bool:
    """True if files can be created in ``path`` (created if missing).

    Tries a real write: ``os.access`` says yes for root even on a read-only mount.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def _in_tree_cache_writable(pkg_dir: Path) -> bool:
    """Whether numba's in-tree locator (``<pkg>/__pycache__``) can write here."""
    cache = pkg_dir / "__pycache__"
    if cache.is_dir():
        return _dir_writable(cache)
    # Do not create __pycache__ just to test: test the parent instead.
    return _dir_writable(pkg_dir)


def _private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) and check it is ours and not group/other-writable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    return _dir_writable(path)


def _fallback_cache_dir() -> str | None:
    """The first usable private cache directory, or None."""
    candidates: list[Path] = []
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        candidates.append(Path(xdg) / "edgetok" / "numba")
    try:
        candidates.append(Path.home() / ".cache" / "edgetok" / "numba")
    except (RuntimeError, KeyError):  # no home directory
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append(Path(tempfile.gettempdir()) / f"edgetok-numba-{uid}")
    for cand in candidates:
        if _private_dir(cand):
            return str(cand)
    return None


def _configure_cache_dir() -> str | None:
    """Point NUMBA_CACHE_DIR at a writable directory when needed; return what was set."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _in_tree_cache_writable(_PACKAGE_DIR):
        return None
    chosen = _fallback_cache_dir()
    if chosen is None:
        return None  # njit() falls back to compiling without a cache
    os.environ["NUMBA_CACHE_DIR"] = chosen
    if "numba.core.config" in sys.modules:
        # numba was imported before us and has read its environment already; numba
        # re-reads changed NUMBA_* variables on its next compile, but set it now too.
        sys.modules["numba.core.config"].CACHE_DIR = chosen
    return chosen


#: The directory this module put into NUMBA_CACHE_DIR, or None if it left it alone.
CACHE_DIR_SET_BY_EDGETOK: str | None = _configure_cache_dir()

import numba  # noqa: E402  (must follow the environment set-up above)


def cache_enabled(func: Any) -> bool:
    """Whether a function made by :func:`njit` has an on-disk cache."""
    return bool(getattr(func, "_edgetok_cached", False))


def njit(func: F | None = None, /, **options: Any) -> Any:
    """``numba.njit`` with ``cache=True, nogil=True`` defaults that never fails to cache.

    Use as ``@njit`` or ``@njit(fastmath=False, ...)``. If ``cache=True`` and numba
    finds no writable cache location for the function's file, the function is compiled
    without a cache instead of raising.
    """
    options.setdefault("cache", True)
    options.setdefault("nogil", True)

    def decorate(f: F) -> F:
        if options["cache"]:
            try:
                dispatcher = numba.njit(**options)(f)
                dispatcher._edgetok_cached = True
                return dispatcher
            except RuntimeError as exc:
                if "cannot cache" not in str(exc):
                    raise
        dispatcher = numba.njit(**{**options, "cache": False})(f)
        dispatcher._edgetok_cached = False
        return dispatcher

    if func is not None:
        return decorate(func)
    return decorate
