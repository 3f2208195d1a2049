"""Synthetic speech corpus: packaged sentences x installed TTS voices x augmentations.

Layout (docs/architecture.md): ``<out>/audio/<split>/<voice>/<id>.flac`` (16 kHz mono
PCM_16) and ``<out>/<split>.jsonl``. The whole plan (sentence, voice, rate, pitch and
augmentation of every utterance) is drawn up front from the seed, so a build is
deterministic and resumable: finished shards leave ``parts/<split>-<shard>.jsonl``,
existing valid flac files are not synthesised again, and the manifests are joined from
the parts at the end.

Splits: ``test`` uses held-out voices (see ``DEFAULT_TEST_VOICES``) and held-out
sentences; ``dev`` uses training voices with other held-out sentences.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf

from edgetok.manifest import read_rows
from edgetok.train import augment, voices
from edgetok.train.text import load_sentences
from edgetok.train.voices import SAMPLE_RATE, Voice

SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: Held out of training. An espeak id without a variant holds out that accent (base voice)
#: with every variant; one with a variant holds out that variant with every accent.
#: flite ``rms`` and festival ``ked_diphone`` are speakers no other training voice has
#: (flite ``kal``/``kal16`` and festival ``kal_diphone`` share one speaker, as do the two
#: ``slt`` voices, so none of those would be a fair held-out voice).
DEFAULT_TEST_VOICES: tuple[str, ...] = (
    "espeak_en-gb-x-gbcwmd",
    "espeak_en-us+f4",
    "espeak_en-gb-scotland+m6",
    "espeak_en-029+klatt4",
    "espeak_en-us-nyc+belinda",
    "flite_rms",
    "festival_ked_diphone",
)
#: Share of training/dev utterances per engine (uniform over the engine's voices).
ENGINE_SHARE = {"espeak": 0.5, "flite": 0.3, "festival": 0.2}
BABBLE_ENGINES = ("espeak", "flite")  # fast enough to synthesise extra talkers
TEST_POOL, DEV_POOL = 3000, 2000  # held-out sentences
SHARD = 100
RATE_RANGE = PITCH_RANGE = (0.8, 1.25)
MIN_DURATION_S = 0.3
_WORDS_PER_S, _LEAD_S = 3.33, 0.42  # duration estimate at rate 1 (fit on a trial build)


@dataclass(frozen=True)
class Script:
    """Everything needed to render one utterance."""

    id: str
    split: str
    voice: str
    text: str  # the label (normalised)
    speak: str  # the TTS input
    rate: float
    pitch: float
    augment: dict
    seed: int
    babble: tuple[tuple[str, str], ...] = field(default=())  # (voice id, TTS input)

    @property
    def path(self) -> str:
        return f"audio/{self.split}/{self.voice}/{self.id}.flac"

    def record(self, duration: float) -> dict:
        """The manifest line; ``augment`` also holds the TTS rate and pitch."""
        aug = {"tts": {"rate": self.rate, "pitch": self.pitch}, **self.augment}
        return {
            "id": self.id,
            "path": self.path,
            "text": self.text,
            "voice": self.voice,
            "duration": round(duration, 4),
            "augment": aug,
            "split": self.split,
        }


def split_voices(
    inventory: tuple[Voice, ...], test_voices: tuple[str, ...]
) -> tuple[list[Voice], list[Voice]]:
    """(train voices, test voices). Test voices missing from the inventory are dropped."""
    have = {v.id: v for v in inventory}
    test = [have[t] for t in test_voices if t in have]
    held_bases = {v.name for v in test if v.engine == "espeak" and not v.variant}
    held_variants = {v.variant for v in test if v.engine == "espeak" and v.variant}
    held = {v.id for v in test}
    train = [
        v
        for v in inventory
        if v.id not in held and v.name not in held_bases and v.variant not in held_variants
    ]
    return train, test


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 3)


def _pick_voice(rng: np.random.Generator, by_engine: dict[str, list[Voice]]) -> Voice:
    engines = [e for e in ENGINE_SHARE if by_engine.get(e)]
    share = np.array([ENGINE_SHARE[e] for e in engines])
    pool = by_engine[engines[int(rng.choice(len(engines), p=share / share.sum()))]]
    return pool[int(rng.integers(len(pool)))]


def plan_split(
    split: str,
    hours: float,
    sentences: tuple[tuple[str, str], ...],
    voice_list: list[Voice],
    rng: np.random.Generator,
) -> list[Script]:
    """Draw utterances until their estimated duration reaches ``hours``. Test voices
    take turns (equal counts per voice); otherwise engines get ENGINE_SHARE."""
    by_engine: dict[str, list[Voice]] = defaultdict(list)
    for v in voice_list:
        by_engine[v.engine].append(v)
    babble_voices = [v for e in BABBLE_ENGINES for v in by_engine.get(e, [])]
    order = rng.permutation(len(sentences))
    out: list[Script] = []
    total = 0.0
    while total < hours * 3600:
        i = len(out)
        text, speak = sentences[order[i % len(order)]]
        if split == "test":
            voice = voice_list[i % len(voice_list)]
        else:
            voice = _pick_voice(rng, by_engine)
        rate, pitch = _log_uniform(rng, *RATE_RANGE), _log_uniform(rng, *PITCH_RANGE)
        aug = augment.sample_augment(rng)
        talkers = aug.get("noise", {}).get("talkers", 0) if babble_voices else 0
        if aug.get("noise", {}).get("kind") == "babble" and not talkers:
            aug["noise"] = {"kind": "pink", "snr_db": aug["noise"]["snr_db"]}
        babble = tuple(
            (
                babble_voices[int(rng.integers(len(babble_voices)))].id,
                sentences[int(rng.integers(len(sentences)))][1],
            )
            for _ in range(talkers)
        )
        out.append(
            Script(
                id=f"{split}{i:06d}",
                split=split,
                voice=voice.id,
                text=text,
                speak=speak,
                rate=rate,
                pitch=pitch,
                augment=aug,
                seed=int(rng.integers(2**31)),
                babble=babble,
            )
        )
        speed = aug.get("speed", {}).get("factor", 1.0)
        total += (text.count(" ") + 1) / (_WORDS_PER_S * rate * speed) + _LEAD_S
    return out


def plan_corpus(
    *,
    hours: float,
    seed: int,
    dev_hours: float,
    test_hours: float,
    test_voices: tuple[str, ...],
) -> tuple[dict[str, list[Script]], dict]:
    """The full plan per split, and its description (stored as ``corpus.json``)."""
    sentences = load_sentences(seed)
    n_test = min(TEST_POOL, len(sentences) // 10)
    n_dev = min(DEV_POOL, len(sentences) // 10)
    pools = {
        "test": sentences[:n_test],
        "dev": sentences[n_test : n_test + n_dev],
        "train": sentences[n_test + n_dev :],
    }
    train_v, test_v = split_voices(voices.inventory(), test_voices)
    if not train_v or not test_v:
        raise RuntimeError("no TTS voices found: install espeak-ng / flite / festival")
    rng = np.random.default_rng(seed)
    targets = {"train": hours, "dev": dev_hours, "test": test_hours}
    plan = {
        s: plan_split(s, targets[s], pools[s], test_v if s == "test" else train_v, rng)
        for s in SPLITS
    }
    info = {
        "seed": seed,
        "hours": targets,
        "sentences": {s: len(p) for s, p in pools.items()},
        "voices": {"train": [v.id for v in train_v], "test": [v.id for v in test_v]},
        "utterances": {s: len(u) for s, u in plan.items()},
        "plan_sha256": hashlib.sha256(
            json.dumps([asdict(u) for s in SPLITS for u in plan[s]]).encode()
        ).hexdigest(),
    }
    return plan, info


def _valid_duration(path: Path) -> float | None:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    ok = info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0
    return info.frames / SAMPLE_RATE if ok else None


def render(utt: Script, out_dir: Path) -> tuple[dict | None, dict]:
    """Synthesise, augment and write one utterance, or reuse its valid file. Returns the
    manifest record (None on failure) and stats (engine, status, synthesis timing)."""
    path = out_dir / utt.path
    stats = {"engine": Voice.parse(utt.voice).engine, "status": "skipped", "synth_s": 0.0}
    duration = _valid_duration(path)
    if duration is not None:
        return utt.record(duration), stats
    try:
        start = time.perf_counter()
        audio = voices.synthesize(Voice.parse(utt.voice), utt.speak, utt.rate, utt.pitch)
        stats.update(synth_s=time.perf_counter() - start, audio_s=audio.size / SAMPLE_RATE)
        babble = [voices.synthesize(Voice.parse(v), s) for v, s in utt.babble]
        audio = augment.apply_augment(audio, utt.augment, np.random.default_rng(utt.seed), babble)
    except (voices.SynthesisError, OSError, ValueError) as e:
        stats.update(status="failed", error=f"{utt.id} {utt.voice}: {e}"[:300])
        return None, stats
    if audio.size < MIN_DURATION_S * SAMPLE_RATE or not np.all(np.isfinite(audio)):
        stats.update(status="failed", error=f"{utt.id} {utt.voice}: too short or not finite")
        return None, stats
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.flac")
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)
    stats["status"] = "done"
    return utt.record(audio.size / SAMPLE_RATE), stats


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _shards(plan: dict[str, list[Script]]) -> dict[str, list[Script]]:
    return {
        f"{split}-{i // SHARD:05d}": utts[i : i + SHARD]
        for split, utts in plan.items()
        for i in range(0, len(utts), SHARD)
    }


def build_corpus(
    out_dir: str | Path,
    *,
    hours: float = 30.0,
    seed: int = 0,
    jobs: int | None = None,
    test_voices: tuple[str, ...] = DEFAULT_TEST_VOICES,
    dev_hours: float = 0.5,
    test_hours: float = 0.75,
    progress: bool = True,
) -> dict:
    """Build (or resume) a corpus in ``out_dir``; ``hours`` is the train target (an
    estimate: actual hours land within ~10 %). Returns a summary: hours and utterances
    per split, failures, and synthesis speed (x realtime) per engine."""
    from tqdm import tqdm

    out = Path(out_dir)
    plan, info = plan_corpus(
        hours=hours, seed=seed, dev_hours=dev_hours, test_hours=test_hours, test_voices=test_voices
    )
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "corpus.json"
    if meta.exists() and json.loads(meta.read_text()) != info:
        raise RuntimeError(f"{out} holds a corpus with another plan ({meta}); use a new --out")
    meta.write_text(json.dumps(info, indent=1) + "\n")
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    shards = _shards(plan)
    todo = {k: v for k, v in shards.items() if not (parts / f"{k}.jsonl").exists()}
    shard_of = {u.id: k for k, utts in todo.items() for u in utts}
    pending: dict[str, list[dict]] = {k: [] for k in todo}
    left = {k: len(v) for k, v in todo.items()}
    status: Counter[str] = Counter()
    synth_s: Counter[str] = Counter()
    audio_s: Counter[str] = Counter()
    errors: list[str] = []
    work = [u for utts in todo.values() for u in utts]
    jobs = max(1, jobs or os.cpu_count() or 1)
    with (
        get_context("spawn").Pool(jobs) as pool,
        tqdm(total=len(work), unit="utt", disable=not progress, smoothing=0.05) as bar,
    ):
        results = pool.imap_unordered(functools.partial(_render_task, out_dir=out), work, 4)
        for utt_id, rec, st in results:
            key = shard_of[utt_id]
            status[st["status"]] += 1
            synth_s[st["engine"]] += st["synth_s"]
            audio_s[st["engine"]] += st.get("audio_s", 0.0)
            if "error" in st:
                errors.append(st["error"])
            if rec is not None:
                pending[key].append(rec)
            left[key] -= 1
            if left[key] == 0:
                recs = sorted(pending.pop(key), key=lambda r: r["id"])
                _write_atomic(parts / f"{key}.jsonl", [json.dumps(r) for r in recs])
            bar.update()
            bar.set_postfix(failed=status["failed"], refresh=False)
    for split in SPLITS:
        lines: list[str] = []
        for key in sorted(k for k in shards if k.startswith(f"{split}-")):
            lines += (parts / f"{key}.jsonl").read_text().splitlines()
        _write_atomic(out / f"{split}.jsonl", lines)
    summary = stats(out)
    summary["build"] = {
        "status": dict(status),
        "errors": errors[:20],
        "x_realtime": {e: round(audio_s[e] / synth_s[e], 1) for e in synth_s if synth_s[e] > 0},
    }
    return summary


def _render_task(utt: Script, out_dir: Path) -> tuple[str, dict | None, dict]:
    rec, st = render(utt, out_dir)
    return utt.id, rec, st


def stats(corpus: str | Path) -> dict:
    """Hours and utterance counts per split, voice and engine of a built corpus."""
    out: dict = {}
    for split in SPLITS:
        path = Path(corpus) / f"{split}.jsonl"
        if not path.exists():
            continue
        recs = read_rows(path)
        by_voice: Counter[str] = Counter()
        by_engine: Counter[str] = Counter()
        n_voice: Counter[str] = Counter()
        for r in recs:
            by_voice[r["voice"]] += r["duration"] / 3600
            by_engine[r["voice"].partition("_")[0]] += r["duration"] / 3600
            n_voice[r["voice"]] += 1
        out[split] = {
            "utterances": len(recs),
            "hours": round(sum(by_voice.values()), 3),
            "clean": sum(set(r["augment"]) == {"tts"} for r in recs),
            "engines": {e: round(h, 3) for e, h in sorted(by_engine.items())},
            "voices": {
                v: {"utterances": n_voice[v], "hours": round(h, 4)}
                for v, h in sorted(by_voice.items())
            },
        }
    return out
