"""Audio in: float32 mono at the model's sample rate (16 kHz).

``load_audio`` reads a whole file. The streaming sources yield float32 [n] chunks and
share one interface (``AudioSource``): ``FileSource`` (soundfile, any rate via soxr),
``RawSource`` (s16le/f32le PCM from a binary stream such as stdin) and ``Microphone``
(PortAudio through sounddevice, imported only here and only when used). A source is
``live`` when its audio arrives in real time whether or not anyone reads it: a pipeline
must then never block it, and counts what it cannot keep (``overruns``).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AudioSource",
    "FileSource",
    "Microphone",
    "RawSource",
    "list_devices",
    "load_audio",
]

SAMPLE_RATE = 16000
RAW_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio file at ``path`` as float32 mono [n] at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr. Raises ``AudioError``
    for a missing, unreadable, non-audio or empty file and for NaN or infinite samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if audio.size == 0:
        raise AudioError(f"{path}: holds no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: holds NaN or infinite samples")
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32, copy=False)
    return mono


class AudioSource(Protocol):
    """Chunks of float32 mono audio at ``sample_rate``; ``close`` ends the iteration."""

    sample_rate: int
    live: bool
    overruns: int
    """Samples the source itself lost (live sources only)."""

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


class _Mono:
    """Float32 [n, channels] blocks -> checked mono chunks at the target rate."""

    def __init__(self, name: str, rate: int, sample_rate: int) -> None:
        self.name, self.rate = name, rate
        self.resampler = (
            soxr.ResampleStream(rate, sample_rate, 1, dtype="float32")
            if rate != sample_rate
            else None
        )
        self.frames = 0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(block)):
            bad = self.frames + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AudioError(f"{self.name}: NaN or infinite sample at {bad / self.rate:.3f} s")
        self.frames += len(block)
        mono = block.mean(axis=1, dtype=np.float32)
        return mono if self.resampler is None else self.resampler.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """The resampler's last samples (at end of stream)."""
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)


class FileSource:
    """An audio file (WAV, FLAC, OGG, ...) streamed in chunks of ``chunk_s`` seconds.

    With ``realtime`` the chunks are paced at the speed of the audio, as a microphone
    would deliver them (the source is then ``live``). A file that ends before the audio
    its header declares (a truncated WAV), or that fails to read after some audio, ends
    the iteration quietly; ``shortfall`` then says how much was read.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: int = SAMPLE_RATE,
        chunk_s: float = 0.032,
        realtime: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.chunk_s = chunk_s
        self.live = realtime
        self.overruns = 0
        self._closed = threading.Event()
        info = _file_info(self.path)
        self.rate = info.samplerate
        self.duration_s = info.duration
        self.declared_frames: int = _wav_data_frames(self.path) or info.frames
        """Sample frames the header declares (a WAV's data chunk size, which libsndfile
        would otherwise trim to the bytes present)."""
        self.frames_read = 0
        """Sample frames read so far, at the file's rate."""
        self.read_error: str | None = None
        """Why reading stopped early, when it failed after some audio."""
        self._ended = False

    def __iter__(self) -> Iterator[np.ndarray]:
        self.frames_read, self.read_error, self._ended = 0, None, False
        try:
            with sf.SoundFile(self.path) as file:
                mono = _Mono(str(self.path), file.samplerate, self.sample_rate)
                blocks = file.blocks(
                    blocksize=max(1, round(self.chunk_s * file.samplerate)),
                    dtype="float32",
                    always_2d=True,
                )
                start = time.monotonic()
                while not self._closed.is_set():
                    try:
                        block = next(blocks, None)
                    except (sf.SoundFileError, OSError) as exc:
                        if mono.frames == 0:
                            raise
                        self.read_error = str(exc)
                        block = None
                    if block is None:
                        self._ended = True
                        break
                    chunk = mono(block)
                    self.frames_read = mono.frames
                    if self.live:
                        time.sleep(
                            max(0.0, start + mono.frames / file.samplerate - time.monotonic())
                        )
                    yield chunk
                tail = mono.flush()
                if len(tail):
                    yield tail
        except (sf.SoundFileError, OSError) as exc:
            raise AudioError(f"{self.path}: not a readable audio file ({exc})") from None
        if mono.frames == 0 and not self._closed.is_set():
            raise AudioError(f"{self.path}: holds no audio samples")

    def shortfall(self) -> str | None:
        """After the iteration: how much less audio was read than the header declares,
        as a sentence naming the file (None when all of it was read, or when the
        iteration was closed before the end)."""
        if not self._ended or (
            self.frames_read >= self.declared_frames and self.read_error is None
        ):
            return None
        why = f"reading failed: {self.read_error}" if self.read_error else "truncated?"
        return (
            f"{self.path}: read {self.frames_read / self.rate:.2f} s of audio, its header "
            f"declares {self.declared_frames / self.rate:.2f} s ({why})"
        )

    def close(self) -> None:
        self._closed.set()


_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
"""Data chunk sizes that a WAV writer on a pipe leaves when it cannot know the size."""


def _wav_data_frames(path: Path) -> int | None:
    """Sample frames the data chunk of a RIFF WAVE file declares; None for another
    format or an open-ended size."""
    with path.open("rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        block_align = 0
        while len(header := file.read(8)) == 8:
            name, size = header[:4], int.from_bytes(header[4:], "little")
            if name == b"data":
                known = block_align and size not in _UNKNOWN_SIZES
                return size // block_align if known else None
            skip = size + size % 2  # chunks are padded to even sizes
            if name == b"fmt ":
                fmt = file.read(min(skip, 16))
                if len(fmt) >= 14:
                    block_align = int.from_bytes(fmt[12:14], "little")
                skip -= len(fmt)
            file.seek(skip, os.SEEK_CUR)
    return None


def _file_info(path: Path) -> Any:
    """soundfile's info of ``path``, or ``AudioError`` saying why there is none."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError, RuntimeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if info.frames == 0:
        raise AudioError(f"{path}: holds no audio samples")
    return info


class RawSource:
    """Headerless little-endian PCM (``s16le`` or ``f32le``) from a binary stream."""

    def __init__(
        self,
        stream: BinaryIO | None = None,
        *,
        format: Literal["s16le", "f32le"] = "s16le",
        rate: int = SAMPLE_RATE,
        channels: int = 1,
        sample_rate: int = SAMPLE_RATE,
        chunk_s: float = 0.032,
        name: str = "stdin",
    ) -> None:
        if format not in RAW_FORMATS:
            raise ValueError(f"raw format must be one of {', '.join(RAW_FORMATS)}, got {format!r}")
        if rate <= 0 or channels <= 0:
            raise ValueError("rate and channels must be positive")
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.dtype = RAW_FORMATS[format]
        self.rate, self.channels, self.sample_rate = rate, channels, sample_rate
        self.frame_bytes = self.dtype.itemsize * channels
        self.chunk_bytes = max(1, round(chunk_s * rate)) * self.frame_bytes
        self.name = name
        self.live = False
        self.overruns = 0
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[np.ndarray]:
        mono = _Mono(self.name, self.rate, self.sample_rate)
        rest = b""
        while not self._closed.is_set():
            data = self.stream.read(self.chunk_bytes)
            if not data:
                break
            data = rest + data
            whole = len(data) - len(data) % self.frame_bytes
            rest = data[whole:]
            if whole:
                block = np.frombuffer(data[:whole], self.dtype).reshape(-1, self.channels)
                if self.dtype.kind == "i":
                    block = block.astype(np.float32) / 32768.0
                yield mono(block.astype(np.float32, copy=False))
        if rest:
            raise AudioError(
                f"{self.name}: ends {len(rest)} bytes into a sample frame of "
                f"{self.frame_bytes} bytes (truncated, or the wrong format or channel count)"
            )
        if mono.frames == 0 and not self._closed.is_set():
            raise AudioError(f"{self.name}: holds no audio samples")
        tail = mono.flush()
        if len(tail):
            yield tail

    def close(self) -> None:
        self._closed.set()


def _sounddevice() -> Any:
    """The sounddevice module, or ``AudioError`` when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library is not installed
        raise AudioError(f"no audio input: {exc} (install libportaudio2)") from None
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """The input devices PortAudio sees: index, name, host API, channels, default rate."""
    sd = _sounddevice()
    try:
        default = sd.default.device[0]
        hostapis = sd.query_hostapis()
        return [
            {
                "index": info["index"],
                "name": info["name"],
                "hostapi": hostapis[info["hostapi"]]["name"],
                "channels": info["max_input_channels"],
                "default_samplerate": info["default_samplerate"],
                "default": info["index"] == default,
            }
            for info in sd.query_devices()
            if info["max_input_channels"] > 0
        ]
    except sd.PortAudioError as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from None


class Microphone:
    """An input device through PortAudio, in chunks of ``chunk`` samples.

    PortAudio's callback thread copies each block into a bounded queue and never waits:
    blocks that find it full are dropped and counted in ``overruns`` (samples), as are
    PortAudio's own input overflows (``overflows``). A stream that PortAudio stops (device
    unplugged, sound server gone) or that delivers nothing for ``stall_s`` seconds (twice
    that for the first block: a PulseAudio source takes ~2 s to start) ends the iteration
    with ``AudioError``.
    """

    live = True

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
        chunk: int = 512,
        queue_chunks: int = 64,
        stall_s: float = 5.0,
    ) -> None:
        self.sd = _sounddevice()
        self.sample_rate, self.chunk, self.stall_s = sample_rate, chunk, stall_s
        try:
            self.info = self.sd.query_devices(device, "input")
        except (ValueError, self.sd.PortAudioError) as exc:
            raise AudioError(f"audio input device {device!r}: {exc}") from None
        self.device = self.info["index"]
        self.name = f"input device {self.device} ({self.info['name']})"
        self.rate = self._rate()
        self.overruns = 0
        self.overflows = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue(queue_chunks)
        self._closed = threading.Event()
        self._finished = threading.Event()

    def _rate(self) -> int:
        """``sample_rate`` when the device takes it, else its default rate (resampled)."""
        try:
            self.sd.check_input_settings(self.device, channels=1, samplerate=self.sample_rate)
            return self.sample_rate
        except (ValueError, self.sd.PortAudioError):
            return int(self.info["default_samplerate"])

    def _callback(self, indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self.overruns += frames

    def __iter__(self) -> Iterator[np.ndarray]:
        mono = _Mono(self.name, self.rate, self.sample_rate)
        blocksize = max(1, round(self.chunk * self.rate / self.sample_rate))
        try:
            stream = self.sd.InputStream(
                device=self.device,
                channels=1,
                samplerate=self.rate,
                dtype="float32",
                blocksize=blocksize,
                callback=self._callback,
                finished_callback=self._finished.set,
            )
        except (ValueError, self.sd.PortAudioError) as exc:
            raise AudioError(f"{self.name}: cannot open: {exc}") from None
        with stream:
            waited, limit = 0.0, 2 * self.stall_s
            while not self._closed.is_set():
                try:
                    block = self._queue.get(timeout=0.1)
                except queue.Empty:
                    waited += 0.1
                    if self._finished.is_set() or waited >= limit:
                        why = (
                            "stopped"
                            if self._finished.is_set()
                            else f"sent nothing for {waited:.1f} s"
                        )
                        raise AudioError(f"{self.name} {why}: disconnected?") from None
                    continue
                waited, limit = 0.0, self.stall_s
                yield mono(block)

    def close(self) -> None:
        self._closed.set()
