"""Segment codes study (issue 19): bytes/s against WER of residual-VQ segment codes.

Run: ``python -m edgetok.bench.wire_codes [--train-utts 800] [--test-utts 100] [--json]``.

1. The default bundle (or ``--bundle``) cuts utterances exactly as ``Transcriber`` does
   (tokenizer -> entropy LM -> the bundle's segmenter -> aggregator) and keeps one vector
   per segment: a random sample of the training split (codebook training) and the first
   ``--test-utts`` of the test split (evaluation).
2. Residual VQ codebooks (``--codebooks 1024:6,256:4``: K rows x M stages, numpy k-means,
   one stage after the other on what the stages before left) are trained on the training
   vectors. A residual code's first m stages are a code too, so one training gives rows
   ``KxM`` for every m <= M.
3. Each row (``--rows float,1024x1,...``) sends the test vectors through its code
   (``edgetok.segment_codes``: encode, then decode) into the bundle's server decoder, as
   it is: no fine-tuning on dequantized vectors. WER is scored on normalised text.

Bytes/s: segments/s of the test audio x (code bits + segment-length bits) / 8. The
length column uses the entropy of the training split's segment lengths (what an entropy
coder would reach) and the fixed width ceil(log2(max_len - min_len + 1)); ``framed``
adds one frame header (``--header-bytes``, v1's 20) per ``--frame-s`` seconds. The
float row is v1's fp16 frame (2 D + 6 bytes per segment).

Resumable: every step caches under ``$EDGETOK_CACHE/wire/<aggregator sha256[:12]>/``
(vectors per chunk of utterances, codebooks after each stage, hypotheses per row as they
are decoded). One thread (``--threads``); run it under ``nice``.
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv:  # BLAS threads must be set before numpy loads
    _threads = sys.argv[sys.argv.index("--threads") + 1]
else:
    _threads = "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _threads

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

from edgetok.cache import cache_dir  # noqa: E402
from edgetok.segment_codes import SegmentCodes, code_bits  # noqa: E402

CORPUS = Path("corpus") / "v1"
CHUNK = 100  # utterances per cached vector file


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- vectors -------------------------------------------------------------------------------


class _Cutter:
    """The bundle's device half: audio -> (segment vectors [S, D], lengths [S])."""

    def __init__(self, bundle_path: Path | None, threads: int, beam: int) -> None:
        from edgetok.bundle import default_bundle_path, load_bundle
        from edgetok.runtime import SessionOptions
        from edgetok.stages import Transcriber

        self.bundle = load_bundle(bundle_path or default_bundle_path())
        self.options = SessionOptions(threads=threads)
        self.transcriber = Transcriber(self.bundle, options=self.options, beam=beam)
        self.pack = self.transcriber.pack

    def __call__(self, path: Path) -> tuple[np.ndarray, np.ndarray, float]:
        from edgetok.audio import load_audio
        from edgetok.segment import segment_lengths

        audio = load_audio(path, self.transcriber.sample_rate)
        encoded = self.transcriber.encode(audio)
        starts = self.pack.compression.starts(encoded.tokens, encoded.entropy)
        source = self.pack.aggregator.source(encoded.tokens, encoded.frames)
        vectors = self.pack.aggregator(source, starts, self.pack.compression.max_len)
        lengths = segment_lengths(starts, len(encoded.tokens))
        return vectors.astype(np.float32), lengths.astype(np.int32), encoded.duration_s


def _vectors(cutter: _Cutter, rows: list[Any], out_dir: Path, name: str) -> dict[str, Any]:
    """Vectors of ``rows`` (manifest utterances), cached per chunk as
    ``{name}-{i:04d}.npz``; returns the concatenation with per-utterance offsets."""
    parts = []
    for begin in range(0, len(rows), CHUNK):
        chunk = rows[begin : begin + CHUNK]
        path = out_dir / f"{name}-{begin // CHUNK:04d}-{len(chunk)}.npz"
        if not path.is_file():
            start = time.perf_counter()
            vectors, lengths, counts, durations = [], [], [], []
            for utt in chunk:
                v, n, d = cutter(utt.path)
                vectors.append(v)
                lengths.append(n)
                counts.append(len(v))
                durations.append(d)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                vectors=np.concatenate(vectors),
                lengths=np.concatenate(lengths),
                counts=np.array(counts, np.int64),
                durations=np.array(durations, np.float64),
                ids=np.array([u.id for u in chunk]),
            )
            tmp.rename(path)
            _log(f"{name}: {begin + len(chunk)}/{len(rows)} ({time.perf_counter() - start:.0f} s)")
        with np.load(path) as data:
            parts.append({key: data[key] for key in data.files})
    counts = np.concatenate([p["counts"] for p in parts])
    return {
        "vectors": np.concatenate([p["vectors"] for p in parts]),
        "lengths": np.concatenate([p["lengths"] for p in parts]),
        "counts": counts,
        "offsets": np.concatenate([[0], np.cumsum(counts)]),
        "durations": np.concatenate([p["durations"] for p in parts]),
        "ids": [str(i) for p in parts for i in p["ids"]],
    }


def _token_bits(cutter: _Cutter, rows: list[Any], out_dir: Path) -> dict[str, float]:
    """Bits of the test utterances' token ids under the entropy LM's own next-token
    probabilities (what an arithmetic coder reaches, within ~2 bytes per utterance), and
    at a fixed log2(vocab) bits per token; cached."""
    from edgetok.audio import load_audio

    path = out_dir / f"tokbits-test-{len(rows)}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from edgetok.wire_eval import token_bits

    bits = tokens = 0.0
    audio_s = 0.0
    for utt in rows:
        audio = load_audio(utt.path, cutter.transcriber.sample_rate)
        ids, _ = cutter.transcriber.tokenizer.encode(audio)
        audio_s += len(audio) / cutter.transcriber.sample_rate
        bits += token_bits(cutter.transcriber, ids)
        tokens += len(ids)
    vocab = cutter.bundle.tokens.vocab_size
    out = {
        "utterances": len(rows),
        "audio_s": audio_s,
        "tokens": tokens,
        "bits_per_token": bits / tokens,
        "ideal_Bps": bits / 8 / audio_s,
        "coded_Bps": (bits / 8 + 2 * len(rows)) / audio_s,
        "fixed_Bps": tokens * math.ceil(math.log2(vocab)) / 8 / audio_s,
    }
    path.write_text(json.dumps(out), encoding="utf-8")
    return out


# -- k-means -------------------------------------------------------------------------------


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and its squared distance, in chunks."""
    norms = np.einsum("kd,kd->k", centroids, centroids)
    labels = np.empty(len(x), np.int64)
    dist = np.empty(len(x), np.float32)
    for begin in range(0, len(x), 8192):
        part = x[begin : begin + 8192]
        scores = norms[None, :] - 2.0 * (part @ centroids.T)
        label = np.argmin(scores, axis=1)
        labels[begin : begin + 8192] = label
        dist[begin : begin + 8192] = scores[np.arange(len(part)), label] + np.einsum(
            "nd,nd->n", part, part
        )
    return labels, np.maximum(dist, 0.0)


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means of ``x`` [N, D] float32 from k random rows; an emptied cluster is
    re-seeded with the row farthest from its centroid."""
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        labels, dist = _assign(x, centroids)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        counts = np.bincount(labels, minlength=k)
        used = np.flatnonzero(counts)
        firsts = np.searchsorted(sorted_labels, used)
        sums = np.add.reduceat(x[order], firsts, axis=0)
        centroids[used] = sums / counts[used, None]
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            far = np.argsort(dist)[::-1][: len(empty)]
            centroids[empty] = x[far]
    return centroids.astype(np.float32)


def train_codebooks(
    x: np.ndarray, k: int, stages: int, iters: int, seed: int, path: Path
) -> SegmentCodes:
    """Residual VQ [stages, k, D] on ``x``; saved to ``path`` after every stage (a run
    resumes from the stages it has)."""
    books: list[np.ndarray] = []
    if path.is_file():
        books = list(np.load(path))[:stages]
    residual = x.astype(np.float32).copy()
    for book in books:
        residual -= SegmentCodes(book[None]).decode(SegmentCodes(book[None]).encode(residual))
    rng = np.random.default_rng(seed + len(books))
    for m in range(len(books), stages):
        start = time.perf_counter()
        book = kmeans(residual, k, iters, rng)
        code = SegmentCodes(book[None])
        residual -= code.decode(code.encode(residual))
        books.append(book)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.stack(books))
        tmp.rename(path)
        rel = float((residual**2).sum() / (x**2).sum())
        _log(
            f"codebook {k}x{m + 1}: residual {rel:.4f} of |x|^2 "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return SegmentCodes(np.ascontiguousarray(np.stack(books)))


# -- evaluation ----------------------------------------------------------------------------


def _row_name(value: str) -> tuple[str, int, int]:
    if value == "float":
        return value, 0, 0
    try:
        size, stages = (int(v) for v in value.split("x"))
        code_bits(size)
    except ValueError:
        raise click.BadParameter(f"a row is 'float' or KxM (e.g. 1024x4), got {value!r}") from None
    return value, size, stages


def _length_bits(lengths: np.ndarray) -> tuple[float, int]:
    """(entropy in bits, fixed width in bits) of the segment lengths."""
    _, counts = np.unique(lengths, return_counts=True)
    p = counts / counts.sum()
    span = int(lengths.max() - lengths.min() + 1)
    return float(-(p * np.log2(p)).sum()), max(1, math.ceil(math.log2(span)))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bundle",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Bundle directory (default: the shipped default bundle).",
)
@click.option(
    "--train-utts",
    default=800,
    show_default=True,
    help="Training-split utterances (a random sample) for the codebooks.",
)
@click.option(
    "--test-utts", default=100, show_default=True, help="First utterances of the test split scored."
)
@click.option(
    "--codebooks",
    "codebook_spec",
    default="1024:6,256:4",
    show_default=True,
    help="Codebook sets to train, K:M (K rows, M residual stages).",
)
@click.option(
    "--rows",
    default="float,1024x1,1024x2,1024x3,1024x4,1024x6,256x4",
    show_default=True,
    help="Rows scored: float or KxM (first M stages of K:M').",
)
@click.option("--iters", default=12, show_default=True, help="k-means iterations per stage.")
@click.option("--beam", default=4, show_default=True, help="Server decoder beam width.")
@click.option("--threads", default=1, show_default=True, help="Threads (BLAS and ONNX Runtime).")
@click.option("--seed", default=0, show_default=True)
@click.option("--header-bytes", default=20, show_default=True, help="Frame header bytes.")
@click.option("--frame-s", default=1.0, show_default=True, help="Seconds of speech per frame.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(
    bundle: Path | None,
    train_utts: int,
    test_utts: int,
    codebook_spec: str,
    rows: str,
    iters: int,
    beam: int,
    threads: int,
    seed: int,
    header_bytes: int,
    frame_s: float,
    as_json: bool,
) -> None:
    """Bytes/s against WER of residual-VQ segment codes (issue 19); see the module doc."""
    from edgetok.evaluate import error_counts, normalize, read_manifest
    from edgetok.stages import server_decoder

    row_specs = [_row_name(r.strip()) for r in rows.split(",") if r.strip()]
    sets: dict[int, int] = {}
    for item in codebook_spec.split(","):
        size, stages = (int(v) for v in item.split(":"))
        code_bits(size)
        sets[size] = max(sets.get(size, 0), stages)
    for name, size, stages in row_specs:
        if size and sets.get(size, 0) < stages:
            raise click.BadParameter(f"row {name} needs codebooks {size}:{stages} or more")

    cutter = _Cutter(bundle, threads, beam)
    sha = cutter.bundle.models["aggregator"].sha256[:12]
    out_dir = cache_dir() / "wire" / sha
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = cache_dir() / CORPUS

    train_rows = read_manifest(corpus / "train.jsonl")
    pick = np.sort(np.random.default_rng(seed).choice(len(train_rows), train_utts, replace=False))
    train = _vectors(cutter, [train_rows[i] for i in pick], out_dir, f"train{train_utts}-s{seed}")
    test_rows = read_manifest(corpus / "test.jsonl", limit=test_utts)
    test = _vectors(cutter, test_rows, out_dir, "test")
    _log(f"vectors: train {len(train['vectors'])}, test {len(test['vectors'])}")

    books = {
        size: train_codebooks(
            train["vectors"],
            size,
            stages,
            iters,
            seed,
            out_dir / f"rvq-{size}-train{train_utts}-s{seed}-i{iters}.npy",
        )
        for size, stages in sets.items()
    }

    decoder = server_decoder(cutter.bundle, cutter.options, beam=beam)
    audio_s = float(test["durations"].sum())
    seg_per_s = len(test["vectors"]) / audio_s
    len_entropy, len_fixed = _length_bits(train["lengths"])
    texts = {u.id: normalize(u.text) for u in test_rows}
    x = test["vectors"]
    energy = float((x**2).sum())
    results = []
    for name, size, stages in row_specs:
        if size:
            code = books[size].prefix(stages)
            vectors = code.decode(code.encode(x))
            bits = code.bits
            payload = seg_per_s * (bits + len_entropy) / 8
            payload_fixed = seg_per_s * (bits + len_fixed) / 8
        else:
            vectors, bits = x, 16 * x.shape[1]
            payload = payload_fixed = seg_per_s * (2 * x.shape[1] + 6)  # v1 fp16 frame rows
        rel_mse = float(((vectors - x) ** 2).sum() / energy)
        hyp_path = out_dir / f"hyp-{name}-b{beam}-train{train_utts}-s{seed}-i{iters}.jsonl"
        done: dict[str, str] = {}
        if hyp_path.is_file():
            for line in hyp_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    item = json.loads(line)
                    done[item["id"]] = item["hypothesis"]
        start = time.perf_counter()
        with open(hyp_path, "a", encoding="utf-8") as file:
            for i, uid in enumerate(test["ids"]):
                if uid in done:
                    continue
                a, b = test["offsets"][i], test["offsets"][i + 1]
                done[uid] = normalize(decoder(np.ascontiguousarray(vectors[a:b])))
                file.write(json.dumps({"id": uid, "hypothesis": done[uid]}) + "\n")
                file.flush()
        word_errors = words = 0
        for uid in test["ids"]:
            counts = error_counts(texts[uid], done[uid])
            word_errors += counts[0]
            words += counts[1]
        row = {
            "row": name,
            "bits_per_segment": bits,
            "rel_mse": rel_mse,
            "payload_Bps": payload,
            "payload_fixed_len_Bps": payload_fixed,
            "framed_Bps": payload + header_bytes / frame_s,
            "wer": word_errors / words,
        }
        results.append(row)
        _log(
            f"{name}: WER {row['wer']:.4f}, {payload:.1f} B/s ({time.perf_counter() - start:.0f} s)"
        )

    tokens = _token_bits(cutter, test_rows, out_dir)
    summary = {
        "bundle": cutter.bundle.meta.name,
        "aggregator_sha256": cutter.bundle.models["aggregator"].sha256,
        "train_utterances": train_utts,
        "train_segments": int(len(train["vectors"])),
        "test_utterances": len(test_rows),
        "test_segments": int(len(x)),
        "test_audio_s": audio_s,
        "segments_per_s": seg_per_s,
        "length_bits_entropy": len_entropy,
        "length_bits_fixed": len_fixed,
        "beam": beam,
        "kmeans_iters": iters,
        "header_bytes": header_bytes,
        "frame_s": frame_s,
        "rows": results,
        "token_stream": tokens,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{summary['test_utterances']} test utterances, {audio_s:.0f} s, "
        f"{seg_per_s:.2f} segments/s; "
        f"codebooks on {summary['train_segments']} segments of {train_utts} train utterances; "
        f"lengths {len_entropy:.2f} bits (entropy) / {len_fixed} (fixed); beam {beam}"
    )
    print(
        f"{'row':<10} {'bits/seg':>8} {'rel MSE':>8} {'B/s':>8} {'B/s fixed':>9} "
        f"{'framed':>8} {'WER %':>6}"
    )
    for r in results:
        print(
            f"{r['row']:<10} {r['bits_per_segment']:>8} {r['rel_mse']:>8.4f} "
            f"{r['payload_Bps']:>8.1f} "
            f"{r['payload_fixed_len_Bps']:>9.1f} {r['framed_Bps']:>8.1f} {100 * r['wer']:>6.2f}"
        )
    print(
        f"{'tokens-AC':<10} {tokens['bits_per_token']:>8.2f} {'':>8} {tokens['coded_Bps']:>8.1f} "
        f"{tokens['fixed_Bps']:>9.1f} {tokens['coded_Bps'] + header_bytes / frame_s:>8.1f} "
        f"{'n/a':>6}  (bits per token; the v2 decoder reads frames, not tokens)"
    )


if __name__ == "__main__":
    main()
