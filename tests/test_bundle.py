"""edgetok.bundle: load, validate, hash-check and write bundle.toml, on the tiny bundle."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomllib
from fixtures.make_tiny_bundle import D, K, make_tiny_bundle, weights

from edgetok.bundle import (
    V1_ROLES,
    AudioSection,
    Bundle,
    BundleError,
    BundleMeta,
    FrontendSection,
    ModelEntry,
    SegmenterSection,
    TextSection,
    TokensSection,
    default_bundle_path,
    load_bundle,
    sha256_file,
    write_bundle,
)
from edgetok.runtime import SessionOptions, TensorSpec


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "tiny")


def edit(directory: Path, old: str, new: str, *, after: str = "") -> Path:
    """Replace ``old`` in the bundle's manifest: its only occurrence, or its first after
    ``after`` (a line that occurs once); returns the manifest's path."""
    manifest = directory / "bundle.toml"
    text = manifest.read_text()
    assert text.count(after or old) == 1, after or old
    index = text.index(old, text.index(after))
    manifest.write_text(text[:index] + new + text[index + len(old) :])
    return manifest


def load_error(directory: Path, *, verify: bool = True) -> str:
    with pytest.raises(BundleError) as error:
        load_bundle(directory, verify=verify)
    return str(error.value)


def test_load_reads_every_field(tiny: Path) -> None:
    bundle = load_bundle(tiny)
    assert bundle.root == tiny
    assert bundle.meta == BundleMeta(
        name="tiny",
        schema_version=1,
        created="2025-01-01T00:00:00Z",
        description="tiny real ONNX models for tests",
        target="default",
    )
    assert bundle.audio == AudioSection(sample_rate=16000)
    assert bundle.frontend == FrontendSection(
        n_fft=400,
        win_length=400,
        hop_length=160,
        n_mels=80,
        f_min=20.0,
        f_max=8000.0,
        log_floor=1e-10,
    )
    assert bundle.tokens == TokensSection(
        rate_hz=50.0,
        vocab_size=K,
        codebook_file="codebook.npy",
        codebook_sha256=sha256_file(tiny / "codebook.npy"),
    )
    assert bundle.segmenter == SegmenterSection(
        global_threshold=2.5, relative_threshold=None, min_len=1, max_len=16, target_hz=15.0
    )
    assert list(bundle.models) == list(V1_ROLES)
    assert bundle.models["aggregator"] == ModelEntry(
        file="aggregator.onnx",
        backend="onnxruntime",
        precision="fp32",
        sha256=sha256_file(tiny / "aggregator.onnx"),
        inputs=(
            TensorSpec("tokens", "int64", ("N", "L")),
            TensorSpec("mask", "bool", ("N", "L")),
        ),
        outputs=(TensorSpec("vectors", "float32", ("N", D)),),
    )
    assert bundle.training == {"corpus": "none", "steps": 0}
    assert bundle.eval == {"wer": {"dense": 0.5, "entropy": 0.25}}
    assert bundle.path_of("decoder") == tiny / "decoder.onnx"
    assert bundle.codebook_path == tiny / "codebook.npy"
    assert bundle.manifest_path == tiny / "bundle.toml"


def test_load_from_manifest_path_equals_directory(tiny: Path) -> None:
    assert load_bundle(tiny / "bundle.toml") == load_bundle(str(tiny))


def test_open_runs_the_model(tiny: Path) -> None:
    session = load_bundle(tiny).open("aggregator", options=SessionOptions(threads=1))
    tokens = np.array([[2, 7]], dtype=np.int64)
    out = session.run({"tokens": tokens, "mask": np.array([[True, False]])})
    np.testing.assert_array_equal(out["vectors"], weights()["A"][[2]])


def test_open_unknown_and_absent_roles(tiny: Path) -> None:
    bundle = load_bundle(tiny)
    with pytest.raises(ValueError, match="unknown model role 'vocoder'; roles: tokenizer"):
        bundle.open("vocoder")
    partial = dataclasses.replace(bundle, models={"tokenizer": bundle.models["tokenizer"]})
    with pytest.raises(BundleError, match=r"bundle 'tiny' has no \[models.decoder\]"):
        partial.path_of("decoder")


def test_open_unknown_backend(tiny: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tflite'; known backends: onnxruntime"):
        load_bundle(tiny).open("tokenizer", backend="tflite")


def test_open_checks_manifest_io_against_model(tiny: Path) -> None:
    manifest = edit(tiny, 'shape = ["B", "T", 80]', 'shape = ["B", "T", 40]')
    with pytest.raises(BundleError) as error:
        load_bundle(tiny).open("tokenizer")
    assert str(error.value) == (
        f"{manifest} [models.tokenizer] inputs: manifest says mel float32 [B, T, 40], "
        "model tokenizer.onnx has mel float32 [B, T, 80]"
    )


def test_bundle_without_directory_has_no_paths(tiny: Path) -> None:
    bundle = dataclasses.replace(load_bundle(tiny), root=None)
    with pytest.raises(BundleError, match="bundle 'tiny' has no directory; use load_bundle"):
        bundle.path_of("tokenizer")


def test_dict_round_trip(tiny: Path) -> None:
    bundle = load_bundle(tiny)
    data = bundle.to_dict()
    assert data == tomllib.loads((tiny / "bundle.toml").read_text())
    assert Bundle.from_dict(data) == dataclasses.replace(bundle, root=None)


def test_write_then_load_round_trip(tiny: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny)
    bundle = dataclasses.replace(
        bundle,
        meta=dataclasses.replace(bundle.meta, description='say "hi"\\\n\ttab \x7f é'),
        segmenter=dataclasses.replace(bundle.segmenter, relative_threshold=-0.5),
        training={"lr": 3e-4, "voices": ["en", "en-us"], "ok": True, "big": float("inf")},
        eval={"wer per voice": {"en-us+f3": 0.125}, "empty": {}},
    )
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    manifest = write_bundle(bundle, copy)
    assert manifest == copy / "bundle.toml"
    assert tomllib.loads(manifest.read_text()) == bundle.to_dict()
    assert load_bundle(copy) == dataclasses.replace(bundle, root=copy)
    assert not list(copy.glob(".*.tmp"))


def test_write_validates_first(tiny: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny)
    bad = dataclasses.replace(bundle, audio=AudioSection(sample_rate=0))
    with pytest.raises(BundleError, match=r"^\[audio\] sample_rate: 0 is not a sample rate"):
        write_bundle(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dynamic_unnamed_dims_round_trip_as_question_mark() -> None:
    entry = ModelEntry(
        file="m.onnx",
        backend="onnxruntime",
        precision="int8",
        sha256="0" * 64,
        inputs=(TensorSpec("mel", "float32", (None, None, 80)),),
        outputs=(TensorSpec("features", "float32", (None, "T2", 256)),),
    )
    data = entry.to_dict()
    assert data["inputs"] == [{"name": "mel", "dtype": "float32", "shape": ["?", "?", 80]}]
    assert ModelEntry.from_dict(data, section="models.tokenizer") == entry


def test_missing_manifest(tmp_path: Path) -> None:
    assert load_error(tmp_path) == f"no bundle at {tmp_path}: {tmp_path / 'bundle.toml'} not found"


def test_missing_model_file(tiny: Path) -> None:
    (tiny / "decoder.onnx").unlink()
    assert load_error(tiny) == (
        f"{tiny / 'bundle.toml'} [models.decoder] file: file decoder.onnx not found in {tiny}"
    )


def test_missing_codebook(tiny: Path) -> None:
    (tiny / "codebook.npy").unlink()
    assert load_error(tiny, verify=False) == (
        f"{tiny / 'bundle.toml'} [tokens] codebook_file: file codebook.npy not found in {tiny}"
    )


def test_bad_hash_names_file_field_and_both_hashes(tiny: Path) -> None:
    expected = sha256_file(tiny / "tokenizer.onnx")
    with open(tiny / "tokenizer.onnx", "ab") as file:
        file.write(b"\0")
    actual = sha256_file(tiny / "tokenizer.onnx")
    assert load_error(tiny) == (
        f"{tiny / 'bundle.toml'} [models.tokenizer] sha256: file tokenizer.onnx has sha256 "
        f"{actual}, manifest says {expected}"
    )
    assert load_bundle(tiny, verify=False).models["tokenizer"].sha256 == expected


def test_bad_codebook_hash(tiny: Path) -> None:
    np.save(tiny / "codebook.npy", np.zeros((K, D), np.float32))
    assert load_error(tiny).startswith(
        f"{tiny / 'bundle.toml'} [tokens] codebook_sha256: file codebook.npy has sha256 "
    )


def test_codebook_rows_must_match_vocab_size(tiny: Path) -> None:
    np.save(tiny / "codebook.npy", np.zeros((K + 1, D), np.float32))
    assert load_error(tiny, verify=False) == (
        f"{tiny / 'bundle.toml'} [tokens] vocab_size: {K}, but codebook.npy has {K + 1} rows"
    )


def test_codebook_must_be_float32_matrix(tiny: Path) -> None:
    np.save(tiny / "codebook.npy", np.zeros(K, np.float64))
    assert load_error(tiny, verify=False) == (
        f"{tiny / 'bundle.toml'} [tokens] codebook_file: codebook.npy is float64 [{K}], "
        "expected float32 [K, D]"
    )


def test_corrupt_codebook(tiny: Path) -> None:
    (tiny / "codebook.npy").write_bytes(b"not numpy")
    assert load_error(tiny, verify=False).startswith(
        f"{tiny / 'bundle.toml'} [tokens] codebook_file: codebook.npy is not a readable .npy"
    )


def test_corrupt_toml(tiny: Path) -> None:
    manifest = edit(tiny, "[audio]", "[audio")
    assert load_error(tiny).startswith(f"{manifest}: not valid TOML: ")


TOKENIZER = "[models.tokenizer]"


@pytest.mark.parametrize(
    ("after", "old", "new", "message"),
    [
        # unknown keys and tables, named with their table
        (
            "",
            "sample_rate = 16000",
            "sample_rate = 16000\nchannels = 1",
            "[audio] channels: unknown key",
        ),
        ("", "[training]", "[extra]\nx = 1\n\n[training]", "[extra]: unknown table"),
        ("", "[models.decoder]", "[models.vocoder]", "[models] vocoder: unknown key"),
        (TOKENIZER, "sha256 =", "sha =", "[models.tokenizer] sha: unknown key"),
        (
            TOKENIZER,
            'dtype = "float32"',
            'layout = "btc", dtype = "float32"',
            "[models.tokenizer] inputs[0] layout: unknown key",
        ),
        # missing keys and tables
        ("", "n_mels = 80\n", "", "[frontend] n_mels: missing required key"),
        (
            TOKENIZER,
            'backend = "onnxruntime"\n',
            "",
            "[models.tokenizer] backend: missing required key",
        ),
        ("", "schema_version = 1\n", "", "[bundle] schema_version: missing required key"),
        ("", "[segmenter]", "[segmenter_x]", "[segmenter_x]: unknown table"),
        (
            "[models.aggregator]",
            ', shape = ["N", 8]',
            "",
            "[models.aggregator] outputs[0] shape: missing required key",
        ),
        # wrong types
        (
            "",
            "sample_rate = 16000",
            'sample_rate = "16k"',
            "[audio] sample_rate: expected an integer, got '16k'",
        ),
        (
            "",
            "sample_rate = 16000",
            "sample_rate = 16000.0",
            "[audio] sample_rate: expected an integer, got 16000.0",
        ),
        ("", "min_len = 1", "min_len = true", "[segmenter] min_len: expected an integer, got True"),
        ("", "rate_hz = 50.0", "rate_hz = [50]", "[tokens] rate_hz: expected a number, got [50]"),
        ("", 'name = "tiny"', "name = 1", "[bundle] name: expected a string, got 1"),
        (
            TOKENIZER,
            '"T", 80]',
            '"T", 80.0]',
            "[models.tokenizer] inputs[0]: tensor 'mel': dimension 80.0 is not an int >= 0",
        ),
        (
            "[models.entropy_lm]",
            'dtype = "int64"',
            'dtype = "long"',
            "[models.entropy_lm] inputs[0]: tensor 'tokens': dtype 'long' is not one of",
        ),
        (
            TOKENIZER,
            'inputs = [{ name = "mel", dtype = "float32", shape = ["B", "T", 80] }]',
            "inputs = []",
            "[models.tokenizer] inputs: expected a non-empty list",
        ),
        (
            "",
            'corpus = "none"',
            "started = 2025-01-01",
            "[training] started: datetime.date(2025, 1, 1) is not a string",
        ),
        ("", "dense = 0.5", "dense = [{ a = 1 }]", "[eval] wer.dense: lists may hold"),
        # bad values
        (
            "",
            "schema_version = 1",
            "schema_version = 2",
            "[bundle] schema_version: 2 is not supported",
        ),
        (
            TOKENIZER,
            'precision = "fp32"',
            'precision = "int4"',
            "[models.tokenizer] precision: 'int4' is not one of fp32, fp16, int8",
        ),
        (
            TOKENIZER,
            'file = "tokenizer.onnx"',
            'file = "../tokenizer.onnx"',
            "[models.tokenizer] file: '../tokenizer.onnx' must be a file name relative",
        ),
        ("", "max_len = 16", "max_len = 0", "[segmenter] max_len: 0 must be >= min_len"),
        (
            "",
            "f_max = 8000.0",
            "f_max = 9000.0",
            "[frontend] f_max: 9000.0 is above the Nyquist frequency",
        ),
        ("", "target_hz = 15.0", "target_hz = -1", "[segmenter] target_hz: -1.0 must be > 0"),
        # values out of their allowed ranges
        (
            "",
            "sample_rate = 16000",
            "sample_rate = 8000",
            "[audio] sample_rate: 8000 is not a sample rate edgetok reads audio at (16000)",
        ),
        (
            "",
            "global_threshold = 2.5",
            "global_threshold = nan",
            "[segmenter] global_threshold: nan is not a finite number",
        ),
        (
            "",
            "global_threshold = 2.5",
            "global_threshold = -inf",
            "[segmenter] global_threshold: -inf is not a finite number",
        ),
        ("", "rate_hz = 50.0", "rate_hz = inf", "[tokens] rate_hz: inf is not a finite number"),
        ("", "rate_hz = 50.0", "rate_hz = 0", "[tokens] rate_hz: 0.0 must be > 0"),
        (
            "",
            "rate_hz = 50.0",
            "rate_hz = 1e9",
            "[tokens] rate_hz: 1000000000.0 is not the frame rate 100 Hz",
        ),
        ("", "rate_hz = 50.0", "rate_hz = 30.0", "[tokens] rate_hz: 30.0 is not the frame rate"),
        ("", "min_len = 1", "min_len = 0", "[segmenter] min_len: 0 must be > 0"),
        ("", "max_len = 16", "max_len = 100000", "[segmenter] max_len: 100000 must be <= 500"),
        (
            "",
            "target_hz = 15.0",
            "target_hz = 60.0",
            "[segmenter] target_hz: 60.0 is above 50, the most segments per second",
        ),
        ("", "n_mels = 80", "n_mels = 400", "[frontend] n_mels: 400 must be <= the n_fft's 201"),
        ("", "hop_length = 160", "hop_length = 800", "[frontend] hop_length: 800 must be <="),
        ("", "log_floor = 1e-10", "log_floor = nan", "[frontend] log_floor: nan is not a finite"),
    ],
)
def test_manifest_errors_name_file_table_and_key(
    tiny: Path, after: str, old: str, new: str, message: str
) -> None:
    manifest = edit(tiny, old, new, after=after)
    assert load_error(tiny).startswith(f"{manifest} {message}")


@pytest.mark.parametrize("section", ["bundle", "frontend", "training"])
def test_section_must_be_a_table(tiny: Path, section: str) -> None:
    data = tomllib.loads((tiny / "bundle.toml").read_text())
    data[section] = 1
    with pytest.raises(BundleError) as error:
        Bundle.from_dict(data)
    assert str(error.value) == f"[{section}]: expected a table, got 1"


def test_sha256_must_be_hex(tiny: Path) -> None:
    digest = sha256_file(tiny / "decoder.onnx")
    manifest = edit(tiny, digest, digest.upper())
    assert load_error(tiny) == (
        f"{manifest} [models.decoder] sha256: {digest.upper()!r} is not a sha256 "
        "(64 lowercase hex digits)"
    )


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_default_bundle_path() -> None:
    import edgetok.bundle

    expected = Path(edgetok.bundle.__file__).resolve().parent / "models" / "default"
    if (expected / "bundle.toml").is_file():
        assert default_bundle_path() == expected
    else:
        with pytest.raises(BundleError) as error:
            default_bundle_path()
        assert str(error.value) == (
            f"the default bundle has not been built: {expected / 'bundle.toml'} does not exist; "
            "pass the path of a bundle directory"
        )


def test_text_vocabulary_is_hash_checked(tiny: Path) -> None:
    """A v2 bundle's ``[text]`` vocabulary: loaded, found, and checked like the models."""
    vocabulary = tiny / "vocabulary.txt"
    vocabulary.write_text("a\nb\n")
    bundle = load_bundle(tiny)
    assert bundle.text is None
    with pytest.raises(BundleError, match=r"no \[text\] vocabulary"):
        _ = bundle.vocabulary_path
    text = TextSection(vocabulary_file="vocabulary.txt", vocabulary_sha256=sha256_file(vocabulary))
    write_bundle(dataclasses.replace(bundle, text=text), tiny)
    assert load_bundle(tiny).vocabulary_path == vocabulary
    vocabulary.write_text("a\nc\n")
    assert "[text] vocabulary_sha256: file vocabulary.txt has sha256" in load_error(tiny)
    vocabulary.unlink()
    assert "[text] vocabulary_file: file vocabulary.txt not found" in load_error(tiny)


def test_shipped_external_data_is_loaded_and_hash_checked(tiny: Path) -> None:
    """A model whose weights are external data shipped beside it (a v2 tokenizer's frozen
    encoder): it runs as before, and a missing or altered data file is a load error."""
    pytest.importorskip("onnx")
    from edgetok.train.onnx_fp16 import externalize_initializers

    bundle = load_bundle(tiny)
    x = np.random.default_rng(0).standard_normal((1, 30, 80)).astype(np.float32)
    want = bundle.open("tokenizer").run({"mel": x})["features"]
    path = bundle.path_of("tokenizer")
    import onnx

    names = [t.name for t in onnx.load(str(path)).graph.initializer if t.dims and t.dims[0] > 1]
    data = externalize_initializers(path, names, "tokenizer.weights")
    assert len(data) == (tiny / "tokenizer.weights").stat().st_size > 0
    entry = dataclasses.replace(
        bundle.models["tokenizer"],
        sha256=sha256_file(path),
        external_file="tokenizer.weights",
        external_sha256=sha256_file(tiny / "tokenizer.weights"),
    )
    assert entry.ships_external
    write_bundle(
        dataclasses.replace(bundle, models={**bundle.models, "tokenizer": entry}, root=None), tiny
    )
    got = load_bundle(tiny).open("tokenizer").run({"mel": x})["features"]
    np.testing.assert_array_equal(got, want)
    blob = bytearray(data)
    blob[0] ^= 1
    (tiny / "tokenizer.weights").write_bytes(bytes(blob))
    assert "[models.tokenizer] external_sha256: file tokenizer.weights has sha256" in load_error(
        tiny
    )
    (tiny / "tokenizer.weights").unlink()
    assert "[models.tokenizer] external_file: file tokenizer.weights not found" in load_error(tiny)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('external_file = "w.bin"', "external_file: 'w.bin' needs external_sha256 too"),
        (f'external_sha256 = "{"0" * 64}"', "needs external_file too"),
        ('external_source = "tiny.en:x"', "external_source: 'tiny.en:x' needs external_file"),
    ],
)
def test_external_keys_need_each_other(tiny: Path, line: str, problem: str) -> None:
    manifest = edit(tiny, "[models.tokenizer]\n", f"[models.tokenizer]\n{line}\n")
    assert manifest.is_file()
    assert problem in load_error(tiny)


def test_a_model_file_that_is_a_symbolic_link_is_refused(tiny: Path, tmp_path: Path) -> None:
    """A model whose file is a link, even to a file with the right sha256, inside the
    bundle or out of it, or under a linked directory: the error names the key and link."""
    manifest = tiny / "bundle.toml"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model = tiny / "tokenizer.onnx"
    shutil.move(model, outside / "tokenizer.onnx")
    model.symlink_to(outside / "tokenizer.onnx")
    assert load_error(tiny) == (
        f"{manifest} [models.tokenizer] file: tokenizer.onnx is a symbolic link; a "
        "bundle's files must be regular files inside its directory"
    )
    model.unlink()
    (tiny / "sub").symlink_to(outside, target_is_directory=True)
    edit(tiny, 'file = "tokenizer.onnx"', 'file = "sub/tokenizer.onnx"')
    assert "[models.tokenizer] file: sub is a symbolic link" in load_error(tiny, verify=False)
    (tiny / "sub").unlink()
    (tiny / "sub").mkdir()
    shutil.move(outside / "tokenizer.onnx", tiny / "sub" / "tokenizer.onnx")
    assert load_bundle(tiny).path_of("tokenizer") == tiny / "sub" / "tokenizer.onnx"


def test_the_codebook_as_a_link_inside_the_bundle_is_refused(tiny: Path) -> None:
    codebook = tiny / "codebook.npy"
    codebook.rename(tiny / "real.npy")
    codebook.symlink_to("real.npy")
    assert "[tokens] codebook_file: codebook.npy is a symbolic link" in load_error(tiny)


def test_default_bundle_copy_edited(tmp_path: Path) -> None:
    """The shipped bundle, copied: it loads; its external data as a link out of the
    bundle, and a sample rate edgetok does not read, are refused."""
    copy = Path(shutil.copytree(default_bundle_path(), tmp_path / "default"))
    bundle = load_bundle(copy)
    external = bundle.external_path_of("decoder_step")
    assert external is not None and external.is_file()
    moved = Path(shutil.move(external, tmp_path / external.name))
    external.symlink_to(moved)
    assert f"[models.decoder_step] external_file: {external.name} is a symbolic link" in (
        load_error(copy, verify=False)
    )
    external.unlink()
    shutil.move(moved, external)
    edit(copy, "sample_rate = 16000", "sample_rate = 44100")
    assert "[audio] sample_rate: 44100 is not a sample rate" in load_error(copy, verify=False)


def test_sample_rates_are_those_audio_is_read_and_the_vad_runs_at() -> None:
    from edgetok import audio, vad
    from edgetok.bundle import SAMPLE_RATES

    assert SAMPLE_RATES == (audio.SAMPLE_RATE,) == (vad.SAMPLE_RATE,)
