"""TTS voice inventory (espeak-ng, flite, festival) and synthesis to 16 kHz mono float32.

Voices are enumerated at runtime from the installed engines. A voice id is
``<engine>_<name>[+<variant>]``, e.g. ``espeak_en-us+f4``, ``flite_slt``,
``festival_kal_diphone``; it names the audio folder and the manifest's ``voice``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
ENGINES: tuple[str, ...] = ("espeak", "flite", "festival")
#: Debian packages that provide the voices (for CI and the README).
TTS_PACKAGES: tuple[str, ...] = (
    "espeak-ng",
    "flite",
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-us-slt-hts",
)
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")
_FESTIVAL_LANGS = ("english", "us", "british")
#: Default mean F0 (Hz) of the flite voices that honour ``int_f0_target_mean``.
_FLITE_F0 = {"kal": 100.0, "kal16": 100.0, "awb": 125.0, "slt": 170.0}
_ESPEAK_RATE = 175  # words per minute at rate 1
_TIMEOUT_S = 120


class SynthesisError(RuntimeError):
    """A voice failed to produce audio for a text."""


@dataclass(frozen=True, order=True)
class Voice:
    """One TTS voice: engine, engine voice name, and espeak-ng variant ('' for none)."""

    engine: str
    name: str
    variant: str = ""

    @property
    def id(self) -> str:
        return f"{self.engine}_{self.name}" + (f"+{self.variant}" if self.variant else "")

    @classmethod
    def parse(cls, voice_id: str) -> Voice:
        engine, _, rest = voice_id.partition("_")
        name, _, variant = rest.partition("+")
        if engine not in ENGINES or not name:
            raise ValueError(f"bad voice id {voice_id!r}")
        return cls(engine, name, variant)


def _run(cmd: list[str], text: str | None = None) -> str:
    try:
        res = subprocess.run(
            cmd, input=text, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise SynthesisError(f"{cmd[0]} timed out") from e
    if res.returncode != 0:
        raise SynthesisError(f"{cmd[0]} exited {res.returncode}: {res.stderr.strip()[-300:]}")
    return res.stdout


def espeak_voices() -> tuple[list[str], list[str]]:
    """(English base voices, variant names) of espeak-ng; mbrola voices only with mbrola."""
    if not shutil.which("espeak-ng"):
        return [], []
    bases = []
    for line in _run(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) < 5 or cols[4].startswith("!v/"):
            continue
        if cols[4].startswith("mb/") and not shutil.which("mbrola"):
            continue
        if cols[1] not in bases:
            bases.append(cols[1])
    variants = []
    for line in _run(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        m = re.search(r"\s!v/(.+?)\s*(\(.*\))?$", line)
        if m and " " not in m.group(1) and m.group(1) not in variants:
            variants.append(m.group(1))
    return bases, variants


def flite_voices() -> list[str]:
    """Flite's built-in voices, without limited-domain ones (``awb_time``)."""
    if not shutil.which("flite"):
        return []
    out = _run(["flite", "-lv"]).split(":", 1)[-1].split()
    return [v for v in out if not v.endswith("_time")]


def festival_voices(root: Path = FESTIVAL_VOICE_DIR) -> list[str]:
    """English festival voices on disk (``voices/<english|us|british>/<name>/``)."""
    if not shutil.which("text2wave"):
        return []
    dirs = [root / lang for lang in _FESTIVAL_LANGS if (root / lang).is_dir()]
    return sorted(d.name for lang in dirs for d in lang.iterdir() if d.is_dir())


@functools.lru_cache(maxsize=1)
def inventory() -> tuple[Voice, ...]:
    """Every installed voice: espeak-ng bases x (no variant + variants), flite, festival."""
    bases, variants = espeak_voices()
    voices = [Voice("espeak", b, v) for b in bases for v in ("", *variants)]
    voices += [Voice("flite", v) for v in flite_voices()]
    voices += [Voice("festival", v) for v in festival_voices()]
    return tuple(voices)


def _command(voice: Voice, text: str, rate: float, pitch: float, wav: str) -> list[str]:
    """The espeak-ng or flite command line that writes ``wav``."""
    if voice.engine == "espeak":
        name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
        espeak_pitch = round(min(99.0, max(0.0, 50 + 35 * math.log2(pitch) / math.log2(1.25))))
        return [
            "espeak-ng", "-v", name, "-s", str(round(_ESPEAK_RATE * rate)),
            "-p", str(espeak_pitch), "-w", wav, "--stdin",
        ]  # fmt: skip
    cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / rate:.4f}"]
    if voice.name in _FLITE_F0:
        cmd += ["--setf", f"int_f0_target_mean={_FLITE_F0[voice.name] * pitch:.1f}"]
    return [*cmd, "-t", text, "-o", wav]


def _festival_scheme(voice: Voice, text: str, rate: float, pitch: float, wav: str) -> str:
    """One Scheme form: select the voice (which resets its parameters), set rate and F0,
    synthesise ``text`` into ``wav``."""
    text = text.replace("\\", " ").replace('"', " ")
    scheme = (
        f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {1 / rate:.4f})"
        " (set! int_lr_params (mapcar (lambda (p) (if (member (car p)"
        f" '(target_f0_mean target_f0_std)) (list (car p) (* {pitch:.4f} (cadr p))) p))"
        " int_lr_params))"
    )
    if voice.name.endswith("_hts"):  # HTS ignores Duration_Stretch; its engine takes -r
        hts_rate = f'(list (list "-r" {rate:.4f}))'
        scheme += f" (set! hts_engine_params (append hts_engine_params {hts_rate}))"
    return scheme + f' (utt.save.wave (utt.synth (Utterance Text "{text}")) "{wav}" \'riff))'


class _Festival:
    """A long-lived ``festival --pipe`` per process: starting festival and loading a voice
    takes ~0.25 s, more than synthesising a sentence."""

    _MARK = b"EDGETOK_DONE"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["festival", "--pipe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def run(self, scheme: str, timeout: float = _TIMEOUT_S) -> None:
        """Evaluate ``scheme`` and wait until festival has finished it."""
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        marker = f'(format t "{self._MARK.decode()}\\n") (fflush nil)'
        deadline = time.monotonic() + timeout
        out = b""
        try:
            proc.stdin.write(f"{scheme}\n{marker}\n".encode())
            proc.stdin.flush()
            while self._MARK not in out:
                ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
                chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
                if not chunk:
                    raise SynthesisError("festival died or timed out")
                out += chunk
        except (OSError, ValueError, SynthesisError) as e:
            self._kill()
            raise SynthesisError(f"festival: {e}") from e


_FESTIVAL = _Festival()


def synthesize(voice: Voice, text: str, rate: float = 1.0, pitch: float = 1.0) -> np.ndarray:
    """Speak ``text`` (float32 16 kHz mono). ``rate`` > 1 speaks faster, ``pitch`` scales
    the mean F0 where the engine allows it. Deterministic; raises SynthesisError."""
    import soundfile as sf
    import soxr

    fd, wav = tempfile.mkstemp(suffix=".wav", prefix="edgetok_tts_")
    os.close(fd)
    try:
        if voice.engine == "festival":
            _FESTIVAL.run(_festival_scheme(voice, text, rate, pitch, wav))
        else:
            _run(
                _command(voice, text, rate, pitch, wav), text if voice.engine == "espeak" else None
            )
        try:
            audio, sr = sf.read(wav, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise SynthesisError(f"{voice.id}: no audio ({e})") from e
    finally:
        os.unlink(wav)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ")
    if audio.size < SAMPLE_RATE // 10 or not np.any(audio):
        raise SynthesisError(f"{voice.id}: empty audio")
    return np.ascontiguousarray(audio, dtype=np.float32)
