"""``edgetok transcribe`` on long files: memory flat in file length, measured as
``edgetok.bench.transcribe_rss`` measures it (the peak RSS of a child process)."""

from __future__ import annotations

from pathlib import Path

from edgetok.bench.transcribe_rss import make_speech, measure


def test_peak_memory_is_flat_in_file_length(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    files = [make_speech(speech_dir / "fox.wav", m, 1.0, tmp_path / f"{m}.wav") for m in (1, 5)]
    short, long = (measure(path, ["--bundle", str(tiny_bundle)], tmp_path) for path in files)
    assert short["exit_status"] == long["exit_status"] == 0, (short, long)
    assert (short["audio_s"], long["audio_s"]) == (60.0, 300.0)
    assert long["utterances"] >= 4 * short["utterances"] > 0
    assert long["peak_rss_mib"] <= 1.2 * short["peak_rss_mib"], (short, long)
