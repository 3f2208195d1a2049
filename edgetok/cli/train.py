"""``edgetok train``: the training stages of the default models (needs the train extra)."""

from __future__ import annotations

from pathlib import Path

import click

STAGES = ("tokenizer", "codebook", "tokenize", "lm", "score", "decoder")


def _corpus_option(f):
    return click.option(
        "--corpus",
        "corpus_dir",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Corpus directory (default: <cache>/corpus/v1).",
    )(f)


def _loop_options(f):
    for option in reversed(
        [
            click.option("--steps", type=int, default=None, help="Total optimizer steps."),
            click.option("--lr", type=float, default=None, help="Peak learning rate."),
            click.option("--warmup", type=int, default=None, help="Linear warm-up steps."),
            click.option(
                "--eval-every",
                type=int,
                default=None,
                help="Steps between evals (0: none; the last step is evaluated otherwise).",
            ),
            click.option(
                "--max-minutes", type=float, default=None, help="Stop (and checkpoint) after this."
            ),
            click.option("--threads", type=int, default=2, show_default=True),
            click.option("--run", "run_name", default=None, help="Run name under <cache>/runs."),
        ]
    ):
        f = option(f)
    return f


def _from_bundle_option(what: str):
    return click.option(
        "--from-bundle",
        "bundle_dir",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help=f"Take {what} from this bundle's ONNX models instead of a training run "
        "(retrain later stages without the earlier checkpoints).",
    )


def _tokens_option(f):
    return click.option(
        "--tokens",
        type=click.Choice(["v1", "v2"]),
        default="v1",
        show_default=True,
        help="Token set: v1 (k-means on the from-scratch tokenizer) or v2 (FSQ on Whisper "
        "tiny.en, `train semantic-tokenize`).",
    )(f)


def _manifest_or_human(manifest: Path | None, human: bool) -> Path:
    """MANIFEST, or the human-speech set's manifest (built under the cache) with --human."""
    if human == (manifest is not None):
        raise click.UsageError("give a MANIFEST or --human (not both)")
    if manifest is not None:
        return manifest
    from edgetok.humanset import human_manifest

    return human_manifest()[0]


def _setup(corpus_dir: Path | None, run_name: str, **loop_kwargs):
    try:
        from edgetok.train.loop import LoopConfig
        from edgetok.train.paths import cache_dir, runs_dir
    except ImportError as e:  # torch missing
        raise click.ClickException(
            f"training needs the train extra ({e}); run: pip install torch==2.13.0 "
            "&& pip install 'edgetok[train]'"
        ) from e
    corpus = corpus_dir or cache_dir() / "corpus" / "v1"
    if not (corpus / "train.jsonl").exists():
        raise click.ClickException(
            f"{corpus}: no train.jsonl; build the corpus with `edgetok corpus build`"
        )
    loop = LoopConfig(**{k: v for k, v in loop_kwargs.items() if v is not None})
    return corpus, runs_dir() / run_name, loop


@click.group(name="train")
def command() -> None:
    """Train the default models, stage by stage; every stage resumes where it stopped.

    Order: tokenizer -> codebook -> tokenize -> lm -> score -> decoder (per mode).
    v2 (pretrained Whisper tiny.en encoder): whisper-features -> semantic.
    Checkpoints and caches live under $EDGETOK_CACHE (default ~/.cache/edgetok).
    """


@command.command("tokenizer")
@_corpus_option
@_loop_options
@click.option("--max-frames", type=int, default=12_000, show_default=True, help="Frames/batch.")
def tokenizer_cmd(corpus_dir, run_name, max_frames, **loop_kwargs) -> None:
    """Train the tokenizer encoder with character CTC."""
    corpus, run_dir, loop = _setup(corpus_dir, run_name or "tokenizer", **loop_kwargs)
    from edgetok.train.fit_tokenizer import train_tokenizer

    train_tokenizer(corpus, run_dir, loop, max_frames=max_frames)


@command.command("whisper-features")
@_corpus_option
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="train")
@click.option("--hours", type=float, default=None, help="A random subset of this many hours.")
@click.option("--threads", type=int, default=2, show_default=True)
def whisper_features_cmd(corpus_dir, split, hours, threads) -> None:
    """Cache the frozen Whisper tiny.en encoder's features of a split (float16, resumable)."""
    corpus, _, _ = _setup(corpus_dir, ".")
    from edgetok.train.fit_semantic import whisper_features

    feats = whisper_features(corpus, split, hours, threads)
    click.echo(f"{split}: {len(feats)} utterances, {int(feats.lengths.sum())} frames")


@command.command("semantic")
@_corpus_option
@_loop_options
@click.option("--train-hours", type=float, default=12.0, show_default=True)
@click.option("--max-frames", type=int, default=6000, show_default=True, help="Frames/batch.")
def semantic_cmd(corpus_dir, run_name, train_hours, max_frames, **loop_kwargs) -> None:
    """Train the v2 tokenizer bottleneck (FSQ, character CTC) on Whisper encoder features."""
    corpus, run_dir, loop = _setup(corpus_dir, run_name or "semantic", **loop_kwargs)
    from edgetok.train.fit_semantic import train_semantic

    train_semantic(corpus, run_dir, loop, train_hours=train_hours, max_frames=max_frames)


@command.command("semantic-tokenize")
@_corpus_option
@click.option("--run", "run_name", default="semantic", show_default=True)
@click.option("--train-hours", type=float, default=12.0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def semantic_tokenize_cmd(corpus_dir, run_name, train_hours, threads) -> None:
    """Turn every split into v2 token ids with a semantic run (cached; --tokens v2)."""
    corpus, run_dir, _ = _setup(corpus_dir, run_name)
    from edgetok.train.fit_semantic import tokenize_semantic_corpus

    tokenize_semantic_corpus(corpus, run_dir, train_hours=train_hours, threads=threads)


@command.command("semantic-probe")
@click.argument("manifest", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--human", is_flag=True, help="Probe the human-speech set (edgetok eval --human).")
@click.option("--run", "run_name", default="semantic", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def semantic_probe_cmd(manifest, human, run_name, threads) -> None:
    """Greedy CTC WER/CER through a semantic run's quantized tokens on MANIFEST."""
    import json

    from edgetok.train.fit_semantic import probe_manifest
    from edgetok.train.paths import runs_dir

    manifest = _manifest_or_human(manifest, human)
    click.echo(json.dumps(probe_manifest(runs_dir() / run_name, manifest, threads), indent=1))


@command.command("codebook")
@_corpus_option
@click.option("--run", "run_name", default="tokenizer", show_default=True)
@click.option("-k", "k", type=int, default=512, show_default=True, help="Codebook size.")
@click.option("--sample-frames", type=int, default=300_000, show_default=True)
def codebook_cmd(corpus_dir, run_name, k, sample_frames) -> None:
    """Fit the k-means codebook on the tokenizer's token-layer features."""
    corpus, run_dir, _ = _setup(corpus_dir, run_name)
    from edgetok.train.fit_tokenizer import fit_codebook

    fit_codebook(corpus, run_dir, k=k, sample_frames=sample_frames)


@command.command("tokenize")
@_corpus_option
@click.option("--run", "run_name", default="tokenizer", show_default=True)
@click.option(
    "--train-hours", type=float, default=None, help="Tokenize only a random subset of train."
)
@_from_bundle_option("the tokenizer and codebook")
def tokenize_cmd(corpus_dir, run_name, train_hours, bundle_dir) -> None:
    """Turn every split of the corpus into token ids (cached)."""
    corpus, run_dir, _ = _setup(corpus_dir, run_name)
    from edgetok.train.fit_tokenizer import bundle_tokenizer, run_tokenizer, tokenize_corpus

    source = bundle_dir or run_dir
    tokenize = bundle_tokenizer(source) if bundle_dir else run_tokenizer(source)
    tokenize_corpus(corpus, tokenize, source, train_hours=train_hours)


@command.command("lm")
@_corpus_option
@_loop_options
@click.option("--max-tokens", type=int, default=16_000, show_default=True, help="Tokens/batch.")
@_tokens_option
def lm_cmd(corpus_dir, run_name, max_tokens, tokens, **loop_kwargs) -> None:
    """Train the causal entropy LM on the train split's tokens."""
    default_run = "entropy_lm" if tokens == "v1" else f"entropy_lm_{tokens}"
    corpus, run_dir, loop = _setup(corpus_dir, run_name or default_run, **loop_kwargs)
    from edgetok.train.fit_lm import train_lm

    train_lm(corpus, run_dir, loop, max_tokens=max_tokens, tokenizer=tokens)


@command.command("score")
@_corpus_option
@click.option("--run", "run_name", default="entropy_lm", show_default=True)
@_from_bundle_option("the entropy LM")
@_tokens_option
def score_cmd(corpus_dir, run_name, bundle_dir, tokens) -> None:
    """Write every split's per-token entropies (cached)."""
    corpus, run_dir, _ = _setup(corpus_dir, run_name)
    from edgetok.train.fit_lm import bundle_entropy, run_entropy, score_corpus

    entropy = bundle_entropy(bundle_dir) if bundle_dir else run_entropy(run_dir)
    score_corpus(corpus, entropy, tokenizer=tokens)


@command.command("decoder")
@_corpus_option
@_loop_options
@click.option(
    "--mode",
    type=click.Choice(["entropy", "fixed", "dense"]),
    default="entropy",
    show_default=True,
    help="Entropy segments, fixed-rate pooling at the same rate, or dense 50 Hz tokens.",
)
@click.option("--target-hz", type=float, default=15.0, show_default=True)
@click.option("--min-len", type=int, default=1, show_default=True)
@click.option("--max-len", type=int, default=8, show_default=True)
@click.option("--max-positions", type=int, default=8_000, show_default=True)
@_from_bundle_option("the codebook")
def decoder_cmd(
    corpus_dir,
    run_name,
    mode,
    target_hz,
    min_len,
    max_len,
    max_positions,
    bundle_dir,
    **loop_kwargs,
) -> None:
    """Train aggregator + decoder jointly for ASR over MODE segments.

    A fresh run starts the token embeddings at the k-means codebook (the tokenizer run's,
    or the bundle's with --from-bundle)."""
    corpus, run_dir, loop = _setup(corpus_dir, run_name or f"decoder_{mode}", **loop_kwargs)
    import numpy as np

    from edgetok.train.fit_decoder import train_decoder
    from edgetok.train.fit_tokenizer import CODEBOOK_FILE

    if bundle_dir is not None:
        from edgetok.bundle import load_bundle

        codebook_path = load_bundle(bundle_dir).codebook_path
    else:
        codebook_path = run_dir.parent / "tokenizer" / CODEBOOK_FILE

    train_decoder(
        corpus,
        run_dir,
        loop,
        mode=mode,
        target_hz=target_hz,
        min_len=min_len,
        max_len=max_len,
        max_positions=max_positions,
        codebook=np.load(codebook_path) if codebook_path.exists() else None,
    )


@command.command("whisper-decoder")
@_corpus_option
@_loop_options
@click.option(
    "--mode",
    type=click.Choice(["entropy", "fixed", "dense"]),
    default="entropy",
    show_default=True,
    help="Entropy segments, fixed-rate pooling at the same rate, or dense 50 Hz tokens.",
)
@click.option("--target-hz", type=float, default=15.0, show_default=True)
@click.option("--min-len", type=int, default=2, show_default=True)
@click.option("--max-len", type=int, default=8, show_default=True)
@click.option(
    "--max-positions",
    type=int,
    default=1_000,
    show_default=True,
    help="Segments + text tokens per batch.",
)
@click.option(
    "--train-hours",
    type=float,
    default=12.0,
    show_default=True,
    help="The train subset whose encoder features and v2 tokens were cached.",
)
@click.option(
    "--init-run",
    default=None,
    help="Start from this whisper-decoder run (its weights and compression).",
)
@click.option(
    "--codes",
    "codes_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Residual VQ codebooks (.npy [M, K, D]) to start from: fine-tune --init-run's "
    "aggregator, these codebooks and its decoder together through the wire's codes "
    "(VQ-VAE losses; wire codes, issue 19).",
)
@click.option(
    "--code-stages",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first M stages of --codes (default: all).",
)
@click.option(
    "--float-share",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.25,
    show_default=True,
    help="With --codes: the share of utterances trained on float vectors (v1 clients).",
)
def whisper_decoder_cmd(
    corpus_dir,
    run_name,
    mode,
    target_hz,
    min_len,
    max_len,
    max_positions,
    train_hours,
    init_run,
    codes_path,
    code_stages,
    float_share,
    **loop_kwargs,
) -> None:
    """v2: train the aggregator and fine-tune the pretrained Whisper tiny.en decoder over
    MODE segments: cut where the v2 tokens say, read from the encoder frames they span
    (after semantic-tokenize, lm --tokens v2, score). With --init-run and --codes: the
    decoder of a trained run learns to read the wire's segment codes."""
    name = run_name or f"whisper_decoder_{mode}"
    corpus, run_dir, loop = _setup(corpus_dir, name, **loop_kwargs)
    from edgetok.segment_codes import SegmentCodes
    from edgetok.train.fit_whisper_decoder import train_whisper_decoder

    if codes_path is not None and init_run is None:
        raise click.UsageError("--codes fine-tunes a trained run: give --init-run")
    codes = None if codes_path is None else SegmentCodes.load(codes_path, code_stages).codebooks

    train_whisper_decoder(
        corpus,
        run_dir,
        loop,
        mode=mode,
        target_hz=target_hz,
        min_len=min_len,
        max_len=max_len,
        max_positions=max_positions,
        train_hours=train_hours,
        init_run=None if init_run is None else run_dir.parent / init_run,
        codes=codes,
        float_share=float_share if codes is not None else 0.0,
    )


@command.command("token-reader")
@_corpus_option
@_loop_options
@click.option(
    "--decoder-run",
    default="whisper_decoder_entropy",
    show_default=True,
    help="The whisper-decoder run whose aggregator and decoder (frozen) read the tokens.",
)
@click.option(
    "--semantic-run",
    default="semantic",
    show_default=True,
    help="The semantic run: its FSQ grid, and its CTC post-net for the first blocks.",
)
@click.option("--layers", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--max-positions", type=int, default=1_000, show_default=True)
@click.option("--train-hours", type=float, default=12.0, show_default=True)
def token_reader_cmd(
    corpus_dir,
    run_name,
    decoder_run,
    semantic_run,
    layers,
    max_positions,
    train_hours,
    **loop_kwargs,
) -> None:
    """Wire v2: train the server's token reader (v2 token ids -> encoder frames), so that
    a device may send its token ids instead of segment vectors; the decoder run's
    aggregator and decoder read the rebuilt frames, frozen (after whisper-decoder)."""
    corpus, run_dir, loop = _setup(corpus_dir, run_name or "token_reader", **loop_kwargs)
    from edgetok.train.fit_token_reader import train_token_reader
    from edgetok.train.token_reader import TokenReaderConfig

    train_token_reader(
        corpus,
        run_dir,
        loop,
        decoder_run=run_dir.parent / decoder_run,
        semantic_run=run_dir.parent / semantic_run,
        config=TokenReaderConfig(layers=layers),
        max_positions=max_positions,
        train_hours=train_hours,
    )


@command.command("add-token-reader")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", default="token_reader", show_default=True)
def add_token_reader_cmd(bundle_dir: Path, run_name: str) -> None:
    """Export a token-reader run into the v2 bundle BUNDLE_DIR (its server-side
    ``token_reader``, for the token wire) and record it in bundle.toml."""
    _, run_dir, _ = _setup(None, run_name)
    from edgetok.train.make_bundle import add_token_reader

    bundle = add_token_reader(bundle_dir, run_dir)
    entry = bundle.models["token_reader"]
    size = (bundle_dir / entry.file).stat().st_size
    click.echo(f"{bundle_dir / entry.file}: {size / 1e6:.1f} MB, sha256 {entry.sha256[:12]}")


@command.command("v2-eval")
@click.argument("manifest", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--human", is_flag=True, help="Score the human-speech set (edgetok eval --human).")
@click.option("--semantic-run", default="semantic", show_default=True)
@click.option("--lm-run", default="entropy_lm_v2", show_default=True)
@click.option(
    "--decoder-run",
    "decoder_runs",
    multiple=True,
    metavar="NAME=RUN",
    default=("entropy=whisper_decoder_entropy",),
    show_default=True,
    help="A whisper-decoder run to score under NAME; repeatable.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--threads", type=int, default=2, show_default=True)
def v2_eval_cmd(manifest, human, semantic_run, lm_run, decoder_runs, limit, threads) -> None:
    """WER/CER of the v2 training checkpoints (torch, greedy) on MANIFEST or --human."""
    import json

    from edgetok.train.fit_whisper_decoder import evaluate_runs
    from edgetok.train.paths import runs_dir

    manifest = _manifest_or_human(manifest, human)
    runs = {}
    for value in decoder_runs:
        name, sep, run = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r} is not NAME=RUN", param_hint="--decoder-run")
        runs[name] = runs_dir() / run
    root = runs_dir()
    result = evaluate_runs(
        manifest, root / semantic_run, root / lm_run, runs, limit=limit, threads=threads
    )
    click.echo(json.dumps(result, indent=1))


def _bundle_meta_options(f):
    """``--description`` and ``--sample-voice`` of the bundle commands."""
    f = click.option(
        "--sample-voice",
        default="flite_rms",
        show_default=True,
        help="Held-out test voice whose utterance becomes the bundle's sample.wav.",
    )(f)
    return click.option("--description", default=None, help="The bundle's one-line description.")(f)


@command.command("bundle")
@_corpus_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle directory (default: the package's edgetok/models/default).",
)
@click.option("--tokenizer-run", default="tokenizer", show_default=True)
@click.option("--lm-run", default="entropy_lm", show_default=True)
@click.option("--decoder-run", default="decoder_entropy", show_default=True)
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Reuse this bundle's tokenizer, entropy LM and codebook (no tokenizer or LM run "
    "needed); only the aggregator and decoder come from --decoder-run. It may be --out.",
)
@_bundle_meta_options
def bundle_cmd(
    corpus_dir, out, tokenizer_run, lm_run, decoder_run, base, description, sample_voice
) -> None:
    """Export the trained runs as a bundle: FP32 ONNX, codebook, manifest, sample WAV."""
    corpus, runs, _ = _setup(corpus_dir, ".")
    from edgetok.train.make_bundle import make_bundle, write_sample_wav

    out = out or Path(__file__).resolve().parents[1] / "models" / "default"
    sample = write_sample_wav(corpus, sample_voice, runs / "sample.wav")
    bundle = make_bundle(
        out,
        tokenizer_run=None if base else runs / tokenizer_run,
        lm_run=None if base else runs / lm_run,
        base=base,
        decoder_run=runs / decoder_run,
        corpus_dir=corpus,
        sample_wav=sample,
        **({"description": description} if description else {}),
    )
    click.echo(f"wrote {bundle.manifest_path}")


@command.command("bundle-v2")
@_corpus_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Bundle directory to write (replaced once complete).",
)
@click.option("--semantic-run", default="semantic", show_default=True)
@click.option("--lm-run", default="entropy_lm_v2", show_default=True)
@click.option("--decoder-run", default="whisper_decoder_entropy", show_default=True)
@_bundle_meta_options
def bundle_v2_cmd(
    corpus_dir, out, semantic_run, lm_run, decoder_run, description, sample_voice
) -> None:
    """Export the v2 runs as a bundle: the tokenizer (Whisper encoder + FSQ, fp16-stored
    weights), entropy LM, feature aggregator, the Whisper decoder's two server graphs,
    FSQ grid codebook, BPE vocabulary, manifest and sample WAV."""
    corpus, runs, _ = _setup(corpus_dir, ".")
    from edgetok.train.make_bundle import make_bundle_v2, write_sample_wav

    sample = write_sample_wav(corpus, sample_voice, runs / "sample.wav")
    bundle = make_bundle_v2(
        out,
        semantic_run=runs / semantic_run,
        lm_run=runs / lm_run,
        decoder_run=runs / decoder_run,
        corpus_dir=corpus,
        sample_wav=sample,
        **({"description": description} if description else {}),
    )
    click.echo(f"wrote {bundle.manifest_path}")


@command.command("export-baselines")
@click.option("--runs", "run_names", multiple=True, help="Runs to export (default per --v2).")
@click.option("--v2", is_flag=True, help="whisper-decoder runs, for a v2 bundle.")
def export_baselines_cmd(run_names, v2) -> None:
    """Export baseline decoders (dense, fixed-rate) for `edgetok eval --baseline`, to
    $EDGETOK_CACHE/exports/RUN."""
    from edgetok.cache import BASELINES, baseline_run, cache_dir
    from edgetok.train.make_bundle import export_decoder_pack, export_whisper_decoder_pack
    from edgetok.train.paths import runs_dir

    export = export_whisper_decoder_pack if v2 else export_decoder_pack
    for name in run_names or [baseline_run(b, v2=v2) for b in BASELINES]:
        out = export(runs_dir() / name, cache_dir() / "exports" / name)
        click.echo(f"wrote {out}")
