"""``edgetok eval``: WER/CER and measured rates of entropy segments, baselines and the
reference systems (pocketsphinx, the original Whisper tiny.en), on a manifest or on the
human-speech set."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from edgetok.cli._common import (
    beam_option,
    bundle_option,
    open_transcriber,
    session_options,
    threads_option,
)

ENTROPY = "entropy"
EVAL_EXTRA = "pip install 'edgetok[eval]'"


def _baselines(values: tuple[str, ...], taken: tuple[str, ...]) -> dict[str, Path]:
    """``NAME=DIR`` options as {name: directory}; a name in ``taken`` is an error."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise click.BadParameter(f"{value!r} is not NAME=DIR", param_hint="--baseline")
        if name in out or name in taken:
            raise click.BadParameter(f"system name {name!r} is taken", param_hint="--baseline")
        out[name] = Path(directory)
    return out


def _default_baselines(v2: bool) -> dict[str, Path]:
    """The baseline packs ``edgetok train export-baselines`` wrote for this kind of bundle,
    where they exist; a note on stderr names the missing ones and how to make them."""
    from edgetok.cache import BASELINES, baseline_pack_dir

    found = {name: baseline_pack_dir(name, v2=v2) for name in BASELINES}
    missing = [name for name, directory in found.items() if not directory.is_dir()]
    if missing:
        recipe = "bash scripts/train-v2" if v2 else "bash scripts/train-v1"
        click.echo(
            f"note: no {' or '.join(missing)} baseline in {found[missing[0]].parent} "
            f"(made by {recipe}, or edgetok train export-baselines{' --v2' if v2 else ''} "
            "from its runs); scoring without it",
            err=True,
        )
    return {name: directory for name, directory in found.items() if name not in missing}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_tables(result: dict[str, Any]) -> str:
    """The systems table and the per-voice WER table of an ``evaluate`` result."""
    systems = result["systems"]
    name_width = max(14, *(len(name) for name in systems))
    lines = [
        f"{result['utterances']} utterances, {result['audio_s']:.1f} s of audio",
        "",
        f"{'system':<{name_width}} {'utts':>5} {'WER':>7} {'CER':>7} {'tokens/s':>9} "
        f"{'segments/s':>11} {'RTF':>7}",
    ]
    for name, s in systems.items():
        lines.append(
            f"{name:<{name_width}} {s['utterances']:>5} "
            f"{_percent(s['wer']):>7} {_percent(s['cer']):>7} "
            f"{_rate(s['tokens_per_s']):>9} {_rate(s['segments_per_s']):>11} {s['rtf']:>7.3f}"
        )
    voices = sorted({voice for s in systems.values() for voice in s["voices"]})
    width = max([len("WER by voice"), *(len(v) + 6 for v in voices)])
    cell = max(12, *(len(name) for name in systems))
    lines += ["", f"{'WER by voice':<{width}} " + " ".join(f"{n:>{cell}}" for n in systems)]
    for voice in voices:
        count = next(s["voices"][voice]["utterances"] for s in systems.values())
        cells = [_percent(s["voices"][voice]["wer"]) for s in systems.values()]
        lines.append(f"{f'{voice} ({count})':<{width}} " + " ".join(f"{c:>{cell}}" for c in cells))
    return "\n".join(lines)


def eval_table(result: dict[str, Any], manifest: Path, command: str) -> dict[str, Any]:
    """An ``evaluate`` result as a bundle's ``[eval]`` table (TOML has no null: rates a
    system does not have are left out)."""
    table: dict[str, Any] = {
        "manifest": str(manifest),
        "utterances": result["utterances"],
        "audio_s": round(result["audio_s"], 1),
        "command": command,
    }
    for name, s in result["systems"].items():
        keys = ("wer", "cer", "tokens_per_s", "segments_per_s", "rtf")
        row = {k: round(float(s[k]), 4) for k in keys if s.get(k) is not None}
        row["per_voice_wer"] = {v: round(float(x["wer"]), 4) for v, x in s["voices"].items()}
        table[name] = row
    return table


def _write_row(sink: TextIO, row: dict[str, str]) -> None:
    """One ``--hypotheses`` JSONL line."""
    sink.write(json.dumps(row) + "\n")


def merge_eval(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new``, plus the systems of ``old`` it does not score when both ran on the same
    manifest and number of utterances (their commands are kept in ``commands``)."""
    if (old.get("manifest"), old.get("utterances")) != (new["manifest"], new["utterances"]):
        return new
    kept = {k: v for k, v in old.items() if isinstance(v, dict) and k not in new}
    if not kept:
        return new
    commands = [*old.get("commands", [old.get("command")]), new["command"]]
    return {**new, **kept, "commands": [c for c in commands if c]}


def _reference_systems(
    ev: Any, pocketsphinx: bool | None, whisper: bool | None, threads: int
) -> dict[str, Any]:
    """The reference systems asked for (None: each where it is installed)."""
    out: dict[str, Any] = {}
    if pocketsphinx is None:
        pocketsphinx = importlib.util.find_spec("pocketsphinx") is not None
        if not pocketsphinx:
            click.echo(f"pocketsphinx is not installed, not scored ({EVAL_EXTRA})", err=True)
    elif pocketsphinx and importlib.util.find_spec("pocketsphinx") is None:
        raise click.ClickException(f"pocketsphinx is not installed: {EVAL_EXTRA}")
    if pocketsphinx:
        out[ev.POCKETSPHINX] = ev.PocketSphinx()
    if whisper is not False:
        from edgetok.pretrained import PretrainedError

        try:
            if importlib.util.find_spec("faster_whisper") is None:
                raise PretrainedError("faster-whisper is not installed")
            reference = ev.WhisperReference(threads=threads)
            out[reference.name] = reference
        except PretrainedError as exc:
            if whisper:
                raise click.ClickException(f"--whisper: {exc} ({EVAL_EXTRA})") from None
            click.echo(f"Whisper is not scored: {exc} ({EVAL_EXTRA})", err=True)
    return out


def _human_manifest() -> Path:
    """Build the human-speech manifest under the cache and say what it holds."""
    from edgetok.humanset import HUMAN_PACKAGES, human_manifest

    try:
        path, counts = human_manifest()
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    for source, count in counts.items():
        if count == 0:
            missing = " ".join(HUMAN_PACKAGES[source])
            click.echo(f"human set: {source} not installed (apt-get install {missing})", err=True)
    click.echo(
        "human set: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" -> {path}",
        err=True,
    )
    return path


@click.command("eval")
@click.argument(
    "manifest", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--human",
    is_flag=True,
    help="Score the human-speech set instead of MANIFEST: recordings of people from "
    "Debian packages (asterisk-core-sounds-en-wav, pocketsphinx-testdata, alsa-utils, "
    "codec2-examples), never used for training; WER per source.",
)
@bundle_option
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    metavar="NAME=DIR",
    help="Also score a decoder pack (edgetok train export-baselines), e.g. dense=DIR, "
    "fixed=DIR; repeatable [default: the dense and fixed-rate packs in "
    "$EDGETOK_CACHE/exports made for this kind of bundle, where they exist].",
)
@click.option(
    "--no-baselines",
    is_flag=True,
    help="Score no baseline pack, not even the default ones.",
)
@click.option(
    "--pocketsphinx/--no-pocketsphinx",
    default=None,
    help="Also score pocketsphinx on the same audio [default: when it is installed].",
)
@click.option(
    "--whisper/--no-whisper",
    default=None,
    help="Also score the original Whisper tiny.en (the pinned wheel, faster-whisper) on the "
    "same audio: the ceiling [default: when it is installed].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N utterances.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON object: manifest, bundle, utterances, audio_s, "
    "systems {name: utterances, wer, cer, tokens_per_s, segments_per_s, rtf, "
    "voices {voice: utterances, wer, cer}}.",
)
@click.option(
    "--record",
    is_flag=True,
    help="Write the result into the bundle's bundle.toml as its [eval] table; systems "
    "scored earlier on the same manifest and utterance count are kept (so a baseline can "
    "be scored in a later run).",
)
@click.option(
    "--hypotheses",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write every transcript to this JSONL file: id, voice, system, reference, "
    "hypothesis (normalised as scored).",
)
@click.option(
    "--wire",
    is_flag=True,
    help="Instead of the systems above: bytes/s on the wire against WER, on the same "
    "clips: float segments (protocol 1), the bundle's segment codes (protocol 2), the "
    "entropy-coded token stream, Opus at 6 and 12 kbit/s then Whisper tiny.en, raw PCM "
    "(edgetok/wire_eval.py).",
)
@click.option(
    "--code-stages",
    default=None,
    metavar="M[,M...]",
    help="With --wire: score these prefixes of the segment codes [default: all stages].",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="With --wire: also draw bytes/s against WER into this PNG.",
)
@beam_option
@threads_option
def command(
    manifest: Path | None,
    human: bool,
    bundle_path: Path | None,
    baselines: tuple[str, ...],
    no_baselines: bool,
    pocketsphinx: bool | None,
    whisper: bool | None,
    limit: int | None,
    as_json: bool,
    record: bool,
    hypotheses: Path | None,
    wire: bool,
    code_stages: str | None,
    plot: Path | None,
    threads: int,
    beam: int,
) -> None:
    """Score speech-to-text on the utterances of MANIFEST (JSONL; a row needs path, or
    audio_filepath, and text; id and voice or source are optional; paths relative to the
    manifest's directory), or on the human-speech set (--human).

    Systems: "entropy" (the bundle's entropy segments and decoder), each --baseline
    pack on the same tokens and entropies, pocketsphinx (the floor) and the original
    Whisper tiny.en (the ceiling). Reports WER and CER overall and per voice (or
    source), measured tokens/s and segments/s, and the real-time factor of each
    system's whole chain. References and transcripts are normalised before scoring
    (lowercase, numbers spelled out, punctuation dropped).
    """
    try:
        from edgetok import evaluate as ev
    except ImportError as exc:
        raise click.ClickException(f"edgetok eval needs {exc.name}: {EVAL_EXTRA}") from None
    from edgetok.audio import AudioError
    from edgetok.stages import DecoderPack

    if human == (manifest is not None):
        raise click.UsageError("give a MANIFEST or --human (not both)")
    manifest = _human_manifest() if human else manifest
    baseline_dirs = _baselines(baselines, (ENTROPY, ev.POCKETSPHINX, "whisper-tiny.en"))
    try:
        utterances = ev.read_manifest(manifest, limit)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    transcriber = open_transcriber(bundle_path, threads, beam)
    if wire:
        _eval_wire(manifest, utterances, transcriber, whisper, threads, code_stages, plot, as_json)
        return
    if code_stages is not None or plot is not None:
        raise click.UsageError("--code-stages and --plot go with --wire")
    if no_baselines and baseline_dirs:
        raise click.UsageError("--no-baselines with --baseline")
    if not baseline_dirs and not no_baselines:
        baseline_dirs = _default_baselines(v2=transcriber.pack.aggregator.reads_frames)
    packs = {ENTROPY: transcriber.pack}
    for name, directory in baseline_dirs.items():
        try:
            packs[name] = DecoderPack.from_dir(directory, session_options(threads), beam=beam)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"--baseline {name}: {exc}") from None
    references = _reference_systems(ev, pocketsphinx, whisper, threads)
    with contextlib.ExitStack() as stack:
        on_hypothesis = None
        if hypotheses is not None:
            try:
                sink = stack.enter_context(open(hypotheses, "w", encoding="utf-8"))
            except OSError as exc:
                raise click.ClickException(f"--hypotheses: {exc}") from None
            on_hypothesis = functools.partial(_write_row, sink)
        try:
            result = ev.evaluate(
                utterances,
                transcriber,
                packs,
                references,
                progress=True,
                on_hypothesis=on_hypothesis,
            )
        except AudioError as exc:
            raise click.ClickException(str(exc)) from None
    if record:
        from edgetok.bundle import write_bundle

        bundle = transcriber.bundle
        command = shlex.join(["edgetok", *sys.argv[1:]])
        table = merge_eval(bundle.eval, eval_table(result, manifest, command))
        written = write_bundle(dataclasses.replace(bundle, eval=table), bundle.root)
        click.echo(f"recorded in {written}", err=True)
    if as_json:
        head = {"manifest": str(manifest), "bundle": str(transcriber.bundle.root)}
        click.echo(json.dumps({**head, **result}))
    else:
        click.echo(format_tables(result))


def _eval_wire(
    manifest: Path,
    utterances: list[Any],
    transcriber: Any,
    whisper: bool | None,
    threads: int,
    code_stages: str | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """``edgetok eval --wire``: one table (or JSON), and the plot when asked."""
    from edgetok import evaluate as ev
    from edgetok import wire_eval
    from edgetok.stages import TokenReaderStage

    try:
        stages = [int(m) for m in code_stages.split(",")] if code_stages else None
    except ValueError:
        raise click.UsageError(f"--code-stages: {code_stages!r} is not M[,M...]") from None
    recognizer = _reference_systems(ev, False, whisper, threads)
    if not recognizer:
        click.echo("no Whisper: the Opus rows are left out", err=True)
    try:
        result = wire_eval.evaluate_wire(
            utterances,
            transcriber,
            code_stages=stages,
            whisper=next(iter(recognizer.values()), None),
            reader=TokenReaderStage.from_bundle(transcriber.bundle, session_options(threads)),
            progress=True,
        )
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if plot is not None:
        title = f"{transcriber.bundle.meta.name} on {manifest.name} ({result['utterances']} clips)"
        wire_eval.plot_wire(result, str(plot), title)
        click.echo(f"plot: {plot}", err=True)
    if as_json:
        head = {"manifest": str(manifest), "bundle": str(transcriber.bundle.root)}
        click.echo(json.dumps({**head, **result}))
    else:
        click.echo(wire_eval.format_wire(result))
