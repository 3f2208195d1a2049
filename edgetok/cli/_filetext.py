"""One file's transcript, gathered utterance by utterance (``edgetok transcribe``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetok.pipeline import Utterance


@dataclass
class FileText:
    """The utterances of one file so far, and what ``--json`` and the text output say."""

    path: Path
    duration_s: float
    """Seconds of audio in the file (once read: of the audio read)."""
    remote: bool = False
    """Whether a server decoded it (then latency and bytes are reported)."""
    dump_tokens: bool = False
    utterances: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    segments: int = 0
    speech_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def add(self, u: Utterance) -> None:
        """Count one utterance in (keeping its text, times and counts, not its audio)."""
        entry: dict[str, Any] = {
            "start_s": u.start_s,
            "end_s": u.end_s,
            "text": u.text,
            "tokens": u.tokens,
            "segments": u.segments,
        }
        if self.remote:
            entry["latency_s"] = u.latency_s
            for key, value in vars(u.traffic).items():
                if value is not None:  # codes: only with a bundle that has them
                    self.bytes[key] = self.bytes.get(key, 0) + value
        self.utterances.append(entry)
        if self.dump_tokens and u.arrays is not None:
            self.starts += (u.arrays.starts + self.tokens).tolist()
            self.token_ids += u.arrays.ids.tolist()
            self.entropy += u.arrays.entropy.tolist()
        self.tokens += u.tokens
        self.segments += u.segments
        self.speech_s += u.duration_s
        for stage, seconds in u.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    @property
    def text(self) -> str:
        return " ".join(u["text"] for u in self.utterances if u["text"])

    def rates(self) -> tuple[float, float]:
        """Tokens and segments per second of speech."""
        if not self.speech_s:
            return 0.0, 0.0
        return self.tokens / self.speech_s, self.segments / self.speech_s

    def summary(self, wall_s: float) -> dict[str, Any]:
        """The ``--json`` object (``wall_s``: the seconds the file took, for the RTF)."""
        tokens_per_s, segments_per_s = self.rates()
        summary: dict[str, Any] = {
            "file": str(self.path),
            "text": self.text,
            "duration_s": self.duration_s,
            "speech_s": self.speech_s,
            "tokens": self.tokens,
            "segments": self.segments,
            "tokens_per_s": tokens_per_s,
            "segments_per_s": segments_per_s,
            "rtf": wall_s / self.duration_s if self.duration_s else 0.0,
            "timings": self.timings,
            "utterances": self.utterances,
        }
        if self.remote:
            summary["bytes"] = self.bytes
        if self.dump_tokens:
            summary |= {"token_ids": self.token_ids, "entropy": self.entropy, "starts": self.starts}
        return summary

    def line(self, wall_s: float) -> str:
        """The closing line of the text output: utterances, rates, RTF (and bytes sent)."""
        tokens_per_s, segments_per_s = self.rates()
        rtf = wall_s / self.duration_s if self.duration_s else 0.0
        count = len(self.utterances)
        line = (
            f"{count} utterance{'' if count == 1 else 's'}, {self.speech_s:.2f} s of speech: "
            f"{self.tokens} tokens ({tokens_per_s:.1f}/s) -> {self.segments} segments "
            f"({segments_per_s:.1f}/s), RTF {rtf:.3f}"
        )
        if self.remote:
            line += f", {self.bytes.get('segments', 0)} B sent"
        return line


def utterance_line(u: Utterance) -> str:
    """An utterance as the text output prints it: its time span and its text."""
    return f"  [{u.start_s:8.2f} - {u.end_s:8.2f} s] {u.text}"
