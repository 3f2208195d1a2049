"""``python -m edgetok.bench.attack``: run the attacks, print their figures (``--json``: one
object), exit 1 when one misses its target."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgetok.bench.attack import attacks
from edgetok.bench.attack.payloads import Payloads
from edgetok.bench.machine import describe, summary

#: Attack name -> the coroutine function that runs it.
ATTACKS = {
    "memory": attacks.memory,
    "hog": attacks.hog,
    "connections": attacks.connections,
    "fd": attacks.fd,
    "fuzz": attacks.fuzz,
    "back-to-back": attacks.back_to_back,
    "resume": attacks.resume,
}


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return out.stdout.strip()


@click.command()
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Bundle the server serves; default: the one shipped with edgetok.",
)
@click.option(
    "--only",
    type=click.Choice(list(ATTACKS)),
    multiple=True,
    help="Run only these attacks (repeatable); default: all.",
)
@click.option("--sessions", default=40, show_default=True, help="memory: hostile sessions.")
@click.option("--samples", default=100, show_default=True, help="hog: latencies per phase.")
@click.option("--idle", default=16, show_default=True, help="connections: idle after hello.")
@click.option(
    "--unauthenticated", default=500, show_default=True, help="connections: never sending."
)
@click.option("--frames", default=10_000, show_default=True, help="fuzz: random frames.")
@click.option("--utterances", default=17, show_default=True, help="back-to-back: utterances.")
@click.option(
    "--serve-option",
    "serve_options",
    multiple=True,
    help="Passed on to edgetok serve (repeatable), e.g. --serve-option=--server-budget-mib=64.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(
    bundle: Path | None,
    only: tuple[str, ...],
    sessions: int,
    samples: int,
    idle: int,
    unauthenticated: int,
    frames: int,
    utterances: int,
    serve_options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Attack a real edgetok serve on 127.0.0.1 as issue 18 describes; print the figures."""
    from edgetok.bundle import default_bundle_path

    bundle = bundle or default_bundle_path()
    payloads = Payloads.for_bundle(bundle)
    sizes: dict[str, dict[str, Any]] = {
        "memory": {"sessions": sessions},
        "hog": {"samples": samples},
        "connections": {"idle": idle, "unauthenticated": unauthenticated},
        "fuzz": {"frames": frames},
        "back-to-back": {"utterances": utterances},
    }
    results: dict[str, Any] = {}
    for name in only or ATTACKS:
        began = time.perf_counter()
        options = {**sizes.get(name, {}), "options": serve_options}
        result = asyncio.run(ATTACKS[name](bundle, payloads, **options))
        result["seconds"] = round(time.perf_counter() - began, 1)
        results[name] = result
        if not as_json:
            figures = ", ".join(f"{k}={v}" for k, v in result.items() if k != "pass")
            click.echo(f"{'PASS' if result['pass'] else 'FAIL'} {name}: {figures}")
    report = {
        "command": " ".join(["python -m edgetok.bench.attack", *sys.argv[1:]]),
        "commit": _commit(),
        "bundle": str(bundle),
        "machine": describe(),
        "attacks": results,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(summary(report["machine"]))
    sys.exit(0 if all(r["pass"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
