"""Assemble a model bundle from trained runs: FP32 ONNX of the four models (the decoder as
one graph with a key/value cache, ``export_decoder``), the codebook, ``bundle.toml`` with
training facts and eval numbers, and a sample WAV."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetok.bundle import (
    AudioSection,
    Bundle,
    BundleMeta,
    FrontendSection,
    ModelEntry,
    SegmenterSection,
    TokensSection,
    load_bundle,
    sha256_file,
    write_bundle,
)
from edgetok.frontend import FrontendConfig
from edgetok.train.export import (
    export_aggregator,
    export_decoder,
    export_entropy_lm,
    export_tokenizer,
)
from edgetok.train.fit_decoder import TOKEN_RATE_HZ, load_speech_to_text
from edgetok.train.fit_lm import load_lm
from edgetok.train.fit_tokenizer import CODEBOOK_FILE, load_encoder

MODEL_FILES = {
    "tokenizer": "tokenizer.onnx",
    "entropy_lm": "entropy_lm.onnx",
    "aggregator": "aggregator.onnx",
    "decoder": "decoder.onnx",
}


def _training_facts(run_dir: Path) -> dict[str, Any]:
    """Steps and the last logged losses/evals of a run, for ``[training]``."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    facts: dict[str, Any] = {"steps": int(state["step"])}
    log = run_dir / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "eval" in record:
                facts.update({k: round(float(v), 4) for k, v in record["eval"].items()})
            elif "loss" in record:
                facts["final_loss"] = round(float(record["loss"]), 4)
    return facts


def make_bundle(
    out_dir: Path,
    *,
    tokenizer_run: Path,
    lm_run: Path,
    decoder_run: Path,
    corpus_dir: Path,
    name: str = "edgetok-default",
    sample_wav: Path | None = None,
    eval_results: dict[str, Any] | None = None,
) -> Bundle:
    """Export the runs into ``out_dir`` (replaced) and return the loaded bundle."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model, compression = load_speech_to_text(decoder_run)
    if compression.mode != "entropy":
        raise ValueError(f"{decoder_run}: a bundle needs the entropy decoder, not {compression}")
    diffs = {
        "tokenizer": export_tokenizer(
            load_encoder(tokenizer_run), out_dir / MODEL_FILES["tokenizer"]
        ),
        "entropy_lm": export_entropy_lm(load_lm(lm_run), out_dir / MODEL_FILES["entropy_lm"]),
        "aggregator": export_aggregator(model.aggregator, out_dir / MODEL_FILES["aggregator"]),
        "decoder": export_decoder(model.decoder, out_dir / MODEL_FILES["decoder"]),
    }
    codebook = np.load(tokenizer_run / CODEBOOK_FILE).astype(np.float32)
    np.save(out_dir / CODEBOOK_FILE, codebook)
    if sample_wav is not None:
        shutil.copy(sample_wav, out_dir / "sample.wav")

    models = {}
    for role, file in MODEL_FILES.items():
        models[role] = ModelEntry.fp32_onnx(out_dir / file)
    frontend = FrontendConfig()
    corpus_info = json.loads((corpus_dir / "corpus.json").read_text())
    bundle = Bundle(
        meta=BundleMeta(
            name=name,
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            description="Trained on synthetic speech (espeak-ng, flite, festival voices).",
        ),
        audio=AudioSection(sample_rate=frontend.sample_rate),
        frontend=FrontendSection.of_recipe(frontend),
        tokens=TokensSection(
            rate_hz=TOKEN_RATE_HZ,
            vocab_size=int(codebook.shape[0]),
            codebook_file=CODEBOOK_FILE,
            codebook_sha256=sha256_file(out_dir / CODEBOOK_FILE),
        ),
        segmenter=SegmenterSection(
            global_threshold=compression.global_threshold,
            relative_threshold=compression.relative_threshold,
            min_len=compression.min_len,
            max_len=compression.max_len,
            target_hz=float(compression.target_hz or 15.0),
        ),
        models=models,
        training={
            "corpus": {
                "name": corpus_dir.name,
                "seed": int(corpus_info["seed"]),
                "hours": {k: float(v) for k, v in corpus_info["hours"].items()},
            },
            "tokenizer": _training_facts(tokenizer_run),
            "entropy_lm": _training_facts(lm_run),
            "decoder": _training_facts(decoder_run),
            "export_max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        },
        eval=eval_results or {},
    )
    write_bundle(bundle, out_dir)
    return load_bundle(out_dir)


def write_sample_wav(corpus_dir: Path, voice: str, out: Path) -> Path:
    """A 3-8 s test utterance of ``voice`` (a held-out voice), written as 16-bit WAV."""
    import soundfile as sf

    from edgetok.train.featcache import read_manifest

    rows = [r for r in read_manifest(corpus_dir / "test.jsonl") if r["voice"] == voice]
    rows = [r for r in rows if 3.0 <= r["duration"] <= 8.0 and set(r["augment"]) == {"tts"}] or rows
    if not rows:
        raise ValueError(f"{corpus_dir}: no test utterance of voice {voice!r}")
    audio, rate = sf.read(corpus_dir / rows[0]["path"], dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, rate, subtype="PCM_16")
    return out


def export_decoder_pack(decoder_run: Path, out_dir: Path) -> Path:
    """Aggregator + decoder (with its key/value cache) ONNX and ``compression.json`` of one run.

    The default bundle ships only the entropy decoder; ``edgetok eval`` compares it with
    the dense and fixed-rate baselines exported here (``--baseline MODE=DIR``).
    """
    from edgetok.train.fit_decoder import COMPRESSION_FILE

    model, compression = load_speech_to_text(decoder_run)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_aggregator(model.aggregator, out_dir / MODEL_FILES["aggregator"])
    export_decoder(model.decoder, out_dir / MODEL_FILES["decoder"])
    (out_dir / "decoder_step.onnx").unlink(missing_ok=True)  # an older export's twin
    (out_dir / COMPRESSION_FILE).write_text(json.dumps(compression.to_dict(), indent=2))
    return out_dir
