"""edgetok.jit: numba functions still work where no cache location is writable.

The subprocess tests make directories read-only with chmod. Root ignores file modes,
so as root the child runs under ``setpriv`` without CAP_DAC_OVERRIDE (skipped if
setpriv is missing); each child first checks that it really cannot write there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgetok.jit as jit

REPO = Path(__file__).resolve().parents[1]

DEMO = textwrap.dedent(
    """
    from edgetok.jit import njit

    @njit
    def add_one(x):
        return x + 1.0
    """
)

# Runs in the child: prove the directories are unwritable, then use the function.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    for d in sys.argv[1:]:
        try:
            open(os.path.join(d, "probe"), "w").close()
        except OSError:
            pass
        else:
            sys.exit("precondition failed: %s is writable" % d)
    import edgetok.jit as jit
    import numba
    control = None
    try:
        numba.njit(cache=True)(lambda x: x)
    except RuntimeError as exc:
        control = str(exc)
    import {module} as demo
    print(json.dumps({{
        "value": demo.add_one(41.0),
        "cached": jit.cache_enabled(demo.add_one),
        "set_dir": jit.CACHE_DIR_SET_BY_EDGETOK,
        "env_dir": os.environ.get("NUMBA_CACHE_DIR"),
        "control_error": control,
        "jit_file": jit.__file__,
    }}))
    """
)


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: chmod cannot make a dir read-only")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def _make_read_only(*paths: Path) -> None:
    for top in paths:
        for p in [top, *top.rglob("*")]:
            mode = p.stat().st_mode
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def _run(module: str, pythonpath: list[Path], env_extra: dict, unwritable: list[Path]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [
        *_unprivileged_prefix(),
        sys.executable,
        "-c",
        CHILD.format(module=module),
        *map(str, unwritable),
    ]
    proc = subprocess.run(
        cmd, env=env, cwd=pythonpath[0], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_read_only_module_and_home_compiles_without_cache(tmp_path, restore_modes):
    mod_dir = tmp_path / "ro_mod"
    home = tmp_path / "ro_home"
    mod_dir.mkdir()
    home.mkdir()
    (mod_dir / "demo_mod.py").write_text(DEMO)
    _make_read_only(mod_dir, home)
    out = _run("demo_mod", [mod_dir, REPO], {"HOME": str(home)}, [mod_dir, home])
    # plain numba fails here (so the test exercises the fallback), edgetok.jit does not
    assert out["control_error"] is not None and "cannot cache" in out["control_error"]
    assert out["value"] == 42.0
    assert out["cached"] is False


def _read_only_install(tmp_path: Path) -> Path:
    """A copy of the edgetok package (jit only) in a read-only site dir."""
    site = tmp_path / "site"
    pkg = site / "edgetok"
    pkg.mkdir(parents=True)
    shutil.copy(REPO / "edgetok" / "__init__.py", pkg / "__init__.py")
    shutil.copy(REPO / "edgetok" / "jit.py", pkg / "jit.py")
    (pkg / "demo_mod.py").write_text(DEMO)
    return site


def test_read_only_install_caches_in_xdg_cache_home(tmp_path, restore_modes):
    site = _read_only_install(tmp_path)
    home = tmp_path / "ro_home"
    home.mkdir()
    xdg = tmp_path / "xdg"
    _make_read_only(site, home)
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(xdg)}
    pkg = site / "edgetok"
    first = _run("edgetok.demo_mod", [site], env, [pkg, home])
    expected = str(xdg / "edgetok" / "numba")
    assert first["jit_file"].startswith(str(site))
    assert first["value"] == 42.0
    assert first["cached"] is True
    assert first["set_dir"] == first["env_dir"] == expected
    assert list(Path(expected).rglob("*.nbi")), "no numba cache index written"
    assert list(Path(expected).rglob("*.nbc")), "no numba cache data written"
    assert stat.S_IMODE(Path(expected).stat().st_mode) == 0o700
    # a second process loads from that cache
    second = _run("edgetok.demo_mod", [site], env, [pkg, home])
    assert second["value"] == 42.0 and second["set_dir"] == expected


def test_read_only_install_falls_back_to_tempdir(tmp_path, restore_modes):
    site = _read_only_install(tmp_path)
    home = tmp_path / "ro_home"
    home.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _make_read_only(site, home)
    env = {"HOME": str(home), "TMPDIR": str(tmp)}
    out = _run("edgetok.demo_mod", [site], env, [site / "edgetok", home])
    assert out["value"] == 42.0
    assert out["cached"] is True
    assert out["set_dir"] == str(tmp / f"edgetok-numba-{os.getuid()}")


def test_existing_numba_cache_dir_is_respected(tmp_path, restore_modes):
    site = _read_only_install(tmp_path)
    mine = tmp_path / "mine"
    _make_read_only(site)
    env = {"NUMBA_CACHE_DIR": str(mine)}
    out = _run("edgetok.demo_mod", [site], env, [site / "edgetok"])
    assert out["set_dir"] is None
    assert out["env_dir"] == str(mine)
    assert out["cached"] is True
    assert list(mine.rglob("*.nbi"))


def test_private_dir_refuses_shared_directories(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert jit._private_dir(shared) is False
    mine = tmp_path / "mine"
    assert jit._private_dir(mine) is True
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700


def test_njit_defaults_and_options():
    @jit.njit
    def f(x):
        return x * 2

    @jit.njit(cache=False, fastmath=False)
    def g(x):
        return x * 3

    assert f(2) == 4 and g(2) == 6
    assert f.targetoptions["nogil"] is True
    assert jit.cache_enabled(f) is True
    assert jit.cache_enabled(g) is False
