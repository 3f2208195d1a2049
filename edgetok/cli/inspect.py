"""``edgetok inspect``: where the entropy model cuts one utterance, as numbers and a figure."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from edgetok.cli._common import (
    beam_option,
    bundle_option,
    open_transcriber,
    read_audio,
    threads_option,
    transcript_line,
    transcript_summary,
)

if TYPE_CHECKING:
    from edgetok.compress import Compression
    from edgetok.stages import Transcript


def _rule_fires(entropy: np.ndarray, starts: np.ndarray, compression: Compression) -> np.ndarray:
    """Which cuts at ``starts`` (all > 0) an entropy rule made; the others ``max_len`` forced."""
    h = entropy.astype(np.float64)  # the segmenter compares in float64
    fired = np.zeros(len(starts), bool)
    if compression.global_threshold is not None:
        fired |= h[starts] > compression.global_threshold
    if compression.relative_threshold is not None:
        fired |= h[starts] - h[starts - 1] > compression.relative_threshold
    return fired


def plot(
    out: Path,
    mel: np.ndarray,
    frame_rate_hz: float,
    transcript: Transcript,
    compression: Compression,
) -> None:
    """Log-mel spectrogram over the entropy curve with its threshold and the cuts."""
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install 'edgetok[eval]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = compression.token_rate_hz
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(12, 6), gridspec_kw={"height_ratios": [1.3, 1]}
    )
    top.imshow(
        mel.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.0, len(mel) / frame_rate_hz, 0, mel.shape[1]),
    )
    top.set_ylabel("mel bin")
    times = np.arange(len(transcript.entropy)) / rate
    bottom.plot(times, transcript.entropy, color="tab:blue", lw=1.2, label="entropy")
    starts = transcript.starts[1:]
    top.vlines(
        starts / rate, 0, 1, transform=top.get_xaxis_transform(), color="white", lw=0.5, alpha=0.5
    )
    fired = _rule_fires(transcript.entropy, starts, compression)
    for mask, style, what in [(fired, "-", "entropy cuts"), (~fired, ":", "max_len cuts")]:
        bottom.vlines(
            starts[mask] / rate,
            0,
            1,
            transform=bottom.get_xaxis_transform(),
            color="0.4",
            lw=0.8,
            ls=style,
            label=f"{what} ({int(mask.sum())})",
        )
    if compression.global_threshold is not None:
        bottom.axhline(
            compression.global_threshold,
            color="tab:red",
            ls="--",
            label=f"global threshold {compression.global_threshold:.2f}",
        )
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("entropy (nats)")
    bottom.set_xlim(0.0, transcript.duration_s)
    bottom.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=8, frameon=False)
    text = textwrap.shorten(transcript.text or "(empty)", 300, placeholder=" ...")
    fig.suptitle(
        f"{transcript.tokens_per_s:.1f} tokens/s -> {transcript.segments_per_s:.1f} segments/s\n"
        + "\n".join(textwrap.wrap(f'"{text}"', 110)),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@bundle_option
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the figure here (PNG, SVG or PDF by extension): log-mel on top, entropy "
    "with the threshold and the cuts below.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: what transcribe --json prints, plus token_ids, entropy, "
    "starts and the segmenter's global_threshold, relative_threshold, min_len, max_len.",
)
@beam_option
@threads_option
def command(
    file: Path,
    bundle_path: Path | None,
    plot_path: Path | None,
    as_json: bool,
    threads: int,
    beam: int,
) -> None:
    """Show how FILE is tokenized and cut: entropy per token, segment starts, transcript."""
    from edgetok.frontend import log_mel

    transcriber = open_transcriber(bundle_path, threads, beam)
    audio = read_audio(file, transcriber.sample_rate)
    transcript = transcriber(audio)
    compression = transcriber.pack.compression
    if plot_path is not None:
        frontend = transcriber.tokenizer.frontend
        frame_rate = frontend.sample_rate / frontend.hop_length
        plot(plot_path, log_mel(audio, frontend), frame_rate, transcript, compression)
    if as_json:
        report = {
            "file": str(file),
            **transcript_summary(transcript),
            "token_ids": transcript.tokens.tolist(),
            "entropy": transcript.entropy.tolist(),
            "starts": transcript.starts.tolist(),
            "global_threshold": compression.global_threshold,
            "relative_threshold": compression.relative_threshold,
            "min_len": compression.min_len,
            "max_len": compression.max_len,
        }
        click.echo(json.dumps(report))
        return
    click.echo(f"{file}  {transcript_line(transcript)}")
    click.echo(f"  {transcript.text}")
    starts = " ".join(f"{s / compression.token_rate_hz:.2f}" for s in transcript.starts)
    click.echo(f"  segment starts (s): {starts}")
    if plot_path is not None:
        click.echo(f"wrote {plot_path}")
