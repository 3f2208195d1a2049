"""Log-mel feature cache of a corpus split: one float16 memmap plus an index.

Training reads features from here instead of decoding audio every epoch. The cache
lives under ``<cache>/features/<corpus>/<split>/`` and is rebuilt from the corpus
manifest whenever the manifest changes (its sha256 is recorded).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from edgetok.frontend import FrontendConfig, log_mel, n_frames
from edgetok.manifest import read_rows

MEL_FILE = "mel.f16"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class FeatureSet:
    """A split's cached features: ``mel[offsets[i] : offsets[i] + lengths[i]]`` is utterance i."""

    mel: np.ndarray  # float16 [total_frames, n_mels], memory-mapped
    offsets: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int64 [N]
    records: list[dict]  # manifest rows, in the same order

    def __len__(self) -> int:
        return len(self.records)

    def utterance(self, i: int) -> np.ndarray:
        """float32 [T, n_mels] log-mel of utterance ``i``."""
        start = int(self.offsets[i])
        return np.asarray(self.mel[start : start + int(self.lengths[i])], dtype=np.float32)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _features_of(args: tuple[str, FrontendConfig]) -> np.ndarray:
    path, cfg = args
    audio, rate = sf.read(path, dtype="float32", always_2d=False)
    if rate != cfg.sample_rate:
        raise ValueError(f"{path}: sample rate {rate}, expected {cfg.sample_rate}")
    return log_mel(audio, cfg).astype(np.float16)


def build_feature_cache(
    corpus_dir: Path,
    split: str,
    out_dir: Path,
    *,
    cfg: FrontendConfig | None = None,
    jobs: int = 2,
) -> FeatureSet:
    """Compute (or reuse) the log-mel cache of ``corpus_dir/<split>.jsonl`` in ``out_dir``."""
    cfg = cfg or FrontendConfig()
    manifest = corpus_dir / f"{split}.jsonl"
    digest = _file_sha256(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX_FILE
    if index_path.exists() and json.loads(index_path.read_text())["manifest_sha256"] == digest:
        return load_feature_cache(out_dir)

    records = read_rows(manifest)
    lengths = np.array(
        [n_frames(round(r["duration"] * cfg.sample_rate), cfg) for r in records], dtype=np.int64
    )
    # Durations are rounded in the manifest; allocate with slack, then trim.
    capacity = int(lengths.sum() + 4 * len(records))
    tmp_path = out_dir / (MEL_FILE + ".tmp")
    mel = np.lib.format.open_memmap(
        tmp_path, mode="w+", dtype=np.float16, shape=(capacity, cfg.n_mels)
    )
    offsets = np.zeros(len(records), dtype=np.int64)
    cursor = 0
    paths = [(str(corpus_dir / r["path"]), cfg) for r in records]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        feats = pool.map(_features_of, paths, chunksize=16)
        for i, f in enumerate(tqdm(feats, total=len(paths), desc=f"log-mel {split}", unit="utt")):
            if cursor + len(f) > capacity:
                raise RuntimeError(f"{paths[i][0]}: longer than its manifest duration says")
            mel[cursor : cursor + len(f)] = f
            offsets[i], lengths[i] = cursor, len(f)
            cursor += len(f)
    mel.flush()
    del mel
    tmp_path.replace(out_dir / MEL_FILE)
    index = {
        "manifest_sha256": digest,
        "frames": cursor,
        "n_mels": cfg.n_mels,
        "offsets": offsets.tolist(),
        "lengths": lengths.tolist(),
        "records": records,
    }
    tmp_index = out_dir / (INDEX_FILE + ".tmp")
    tmp_index.write_text(json.dumps(index))
    tmp_index.replace(index_path)
    return load_feature_cache(out_dir)


def load_feature_cache(out_dir: Path) -> FeatureSet:
    """Open a cache written by :func:`build_feature_cache`."""
    index = json.loads((out_dir / INDEX_FILE).read_text())
    mel = np.load(out_dir / MEL_FILE, mmap_mode="r")
    return FeatureSet(
        mel=mel,
        offsets=np.asarray(index["offsets"], dtype=np.int64),
        lengths=np.asarray(index["lengths"], dtype=np.int64),
        records=index["records"],
    )
