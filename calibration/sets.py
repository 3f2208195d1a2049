"""Calibration sets: the inputs each model sees, made from audio by the FP32 pipeline.

Per utterance, for each of the bundle's device models (``edgetok.stages.device_roles``):
the log-mel of the whole utterance for the tokenizer, its FP32 tokens for the entropy
LM, the segments that the FP32 entropy cuts give for the aggregator (padded to
``max_len`` with their mask: v1's tokens, or v2's encoder frames from the FP32
tokenizer), and for a v1 bundle's character decoder the FP32 segment vectors as the
prefix with BOS + the FP32 greedy transcript as the text (and an empty key/value cache
when the decoder takes one: the full sequence in one run): what each model is fed at
run time. A v2 bundle's server decoder is not built, so it gets no feeds. A set is
cached as one ``.npz`` keyed by the bundle's hashes, the chosen files and the format
version, so rebuilding a target reuses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from edgetok.bundle import Bundle
from edgetok.calibration.sources import Utterance

__all__ = ["CalibrationSet", "Feeds", "make_calibration"]

#: Bump when the inputs made from an utterance change.
FORMAT_VERSION: Final = 2
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs per role, one feed dict per utterance: what every quantizer reads."""

    feeds: dict[str, list[Feeds]]
    utterances: tuple[str, ...]

    def reader(self, role: str) -> Sequence[Feeds]:
        """The calibration feeds of ``role`` (named like the model's inputs)."""
        if role not in self.feeds:
            raise KeyError(f"no calibration data for {role!r}; roles: {', '.join(self.feeds)}")
        return self.feeds[role]

    def save(self, path: Path) -> None:
        arrays = {
            f"{role}/{i}/{name}": value
            for role, items in self.feeds.items()
            for i, feeds in enumerate(items)
            for name, value in feeds.items()
        }
        arrays["utterances"] = np.array(self.utterances)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp.npz")
        np.savez_compressed(temporary, **arrays)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> CalibrationSet:
        feeds: dict[str, list[Feeds]] = {}
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                if key == "utterances":
                    continue
                role, index, name = key.split("/")
                items = feeds.setdefault(role, [])
                while len(items) <= int(index):
                    items.append({})
                items[int(index)][name] = data[key]
            utterances = tuple(str(u) for u in data["utterances"])
        return cls(feeds, utterances)


def _key(bundle: Bundle, utterances: Sequence[Utterance]) -> str:
    identity = {
        "version": FORMAT_VERSION,
        "models": {role: entry.sha256 for role, entry in bundle.models.items()},
        "codebook": bundle.tokens.codebook_sha256,
        "segmenter": bundle.segmenter.to_dict(),
        "audio": [[str(u.path.resolve()), u.path.stat().st_size] for u in utterances],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _compute(bundle: Bundle, utterances: Sequence[Utterance]) -> CalibrationSet:
    from tqdm import tqdm

    from edgetok.audio import load_audio
    from edgetok.frontend import log_mel
    from edgetok.stages import (
        AggregatorStage,
        DecoderStage,
        EntropyStage,
        TokenizerStage,
        bundle_compression,
        device_roles,
        frontend_config,
    )
    from edgetok.vocab import BOS, encode_text

    roles = device_roles(bundle)
    tokenizer = TokenizerStage.from_bundle(bundle)
    entropy = EntropyStage(bundle.open("entropy_lm"))
    aggregator = AggregatorStage(bundle.open("aggregator"))
    compression = bundle_compression(bundle)
    max_len = compression.max_len
    # v1's character decoder: fed the greedy transcript.
    decoder = DecoderStage.from_bundle(bundle, beam=1) if "decoder" in roles else None
    frontend = frontend_config(bundle)
    feeds: dict[str, list[Feeds]] = {role: [] for role in roles}
    for utt in tqdm(utterances, desc="calibration", unit="utt", leave=False):
        audio = load_audio(utt.path, bundle.audio.sample_rate)
        mel = log_mel(audio, frontend)
        if mel.shape[0] == 0:
            continue
        tokens, frames = tokenizer.encode_mel(mel)
        starts = compression.starts(tokens, entropy(tokens))
        feeds["tokenizer"].append({"mel": mel[None]})
        feeds["entropy_lm"].append({"tokens": tokens[None]})
        source = aggregator.source(tokens, frames)
        feeds["aggregator"].append(aggregator.feeds(source, starts, max_len))
        if decoder is not None:
            vectors = aggregator(source, starts, max_len)
            text = [BOS, *encode_text(decoder(vectors))]
            # The decoder's own inputs: with its empty key/value cache when it takes one.
            feeds["decoder"].append(decoder.feeds(vectors[None], np.array([text], np.int64)))
    return CalibrationSet(feeds, tuple(str(u.path) for u in utterances))


def make_calibration(
    bundle: Bundle, utterances: Sequence[Utterance], cache_dir: Path | None
) -> CalibrationSet:
    """The calibration set of ``utterances`` through ``bundle``'s FP32 models, read from
    ``cache_dir`` when it was made before (and written there when not)."""
    if cache_dir is None:
        return _compute(bundle, utterances)
    path = cache_dir / f"calib-{_key(bundle, utterances)}.npz"
    if path.is_file():
        return CalibrationSet.load(path)
    made = _compute(bundle, utterances)
    made.save(path)
    return made
