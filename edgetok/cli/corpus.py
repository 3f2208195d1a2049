"""``edgetok corpus``: build the synthetic TTS speech corpus and summarise one."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("corpus")
def command() -> None:
    """Synthetic speech corpus (packaged text x installed TTS voices x augmentation)."""


@command.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Corpus directory [default: $EDGETOK_CACHE/corpus/v1].",
)
@click.option("--hours", type=float, default=30.0, show_default=True, help="Train hours.")
@click.option("--dev-hours", type=float, default=0.5, show_default=True)
@click.option("--test-hours", type=float, default=0.75, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=int, default=None, help="Worker processes [default: all cores].")
def build(
    out: Path | None, hours: float, dev_hours: float, test_hours: float, seed: int, jobs: int | None
) -> None:
    """Build or resume a corpus: re-running the same command finishes an interrupted one."""
    from edgetok.train.corpus import build_corpus
    from edgetok.train.paths import cache_dir

    out = out or cache_dir() / "corpus" / "v1"
    try:
        summary = build_corpus(
            out, hours=hours, seed=seed, jobs=jobs, dev_hours=dev_hours, test_hours=test_hours
        )
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    build_info = summary.pop("build")
    click.echo(f"corpus: {out}")
    click.echo(_overview(summary))
    click.echo(f"this run: {json.dumps(build_info['status'])}")
    click.echo(f"synthesis speed (x realtime): {json.dumps(build_info['x_realtime'])}")
    for err in build_info["errors"]:
        click.echo(f"  failed: {err}", err=True)


@command.command("stats")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def stats(corpus_dir: Path, as_json: bool) -> None:
    """Hours and utterances per split, engine and voice of CORPUS_DIR."""
    from edgetok.train.corpus import stats as corpus_stats

    summary = corpus_stats(corpus_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(_overview(summary))
    for split, s in summary.items():
        click.echo(f"\n{split} voices ({len(s['voices'])}):")
        for voice, v in s["voices"].items():
            click.echo(f"  {voice:40s} {v['utterances']:6d} utt {v['hours'] * 60:8.1f} min")


def _overview(summary: dict) -> str:
    lines = []
    for split, s in summary.items():
        engines = ", ".join(f"{e} {h:.2f} h" for e, h in s["engines"].items())
        lines.append(
            f"{split:5s} {s['hours']:7.2f} h {s['utterances']:7d} utt "
            f"{len(s['voices']):4d} voices {s['clean']:6d} clean  ({engines})"
        )
    return "\n".join(lines)
