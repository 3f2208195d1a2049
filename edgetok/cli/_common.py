"""Options and helpers shared by the commands that run the models (transcribe, eval, inspect).

Heavy modules (onnxruntime sessions, numba) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from edgetok.bundle import Bundle
    from edgetok.runtime import SessionOptions
    from edgetok.stages import Transcriber, Transcript

F = TypeVar("F", bound=Callable[..., Any])


def token_options(help_text: str) -> Callable[[F], F]:
    """``--token`` (env EDGETOK_TOKEN) and ``--token-file``; the command gets ``token``,
    stripped, from whichever was given."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, token: str | None, token_file: Path | None, **kwargs: Any) -> Any:
            if token_file is not None:
                if token:
                    raise click.UsageError(
                        "give the token once: --token/EDGETOK_TOKEN or --token-file"
                    )
                token = token_file.read_text(encoding="utf-8").strip()
                if not token:
                    raise click.UsageError(f"--token-file {token_file} is empty")
            return f(*args, token=token.strip() if token else token, **kwargs)

        command = click.option(
            "--token-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the bearer token from this file (surrounding whitespace stripped).",
        )(command)
        return click.option(
            "--token",
            envvar="EDGETOK_TOKEN",
            help=f"{help_text} On the command line it is visible to other users in the "
            "process list: prefer EDGETOK_TOKEN or --token-file.",
        )(command)

    return decorate


def signature_options(bundle_param: str) -> Callable[[F], F]:
    """``--require-signed`` and ``--trusted-key`` (repeatable): with the flag, the bundle
    in the command's ``bundle_param`` (default: the shipped one) must be signed by a
    trusted key (``edgetok.signing``), else the command stops with the reason."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(
            *args: Any, require_signed: bool, trusted_key: tuple[Path, ...], **kwargs: Any
        ) -> Any:
            if trusted_key and not require_signed:
                raise click.UsageError("--trusted-key is for --require-signed")
            if require_signed:
                from edgetok import signing
                from edgetok.bundle import default_bundle_path

                if not trusted_key:
                    raise click.UsageError("--require-signed needs --trusted-key")
                try:
                    signing.verify_bundle(
                        kwargs[bundle_param] or default_bundle_path(), trusted_key
                    )
                except (signing.SignatureError, ImportError) as exc:
                    raise click.ClickException(f"refused: {exc}") from None
            return f(*args, **kwargs)

        command = click.option(
            "--trusted-key",
            multiple=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Ed25519 public key (PEM) whose signature --require-signed accepts.",
        )(command)
        return click.option(
            "--require-signed",
            is_flag=True,
            help="Refuse a bundle whose manifest is not signed by a --trusted-key (edgetok "
            "sign); its files are hash-checked against the manifest.",
        )(command)

    return decorate


def bundle_option(f: F) -> F:
    return click.option(
        "--bundle",
        "bundle_path",
        type=click.Path(exists=True, path_type=Path),
        help="Model bundle directory (or its bundle.toml) [default: the bundle shipped "
        "with edgetok].",
    )(f)


def beam_option(f: F) -> F:
    from edgetok.beam import DEFAULT_BEAM

    return click.option(
        "--beam",
        type=click.IntRange(min=1),
        default=DEFAULT_BEAM,
        show_default=True,
        help="Beam width of the server decoder, where this command decodes (1: greedy "
        "decoding, the fastest).",
    )(f)


def threads_option(f: F) -> F:
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Intra-op threads of each model session.",
    )(f)


def open_bundle(path: Path | None) -> Bundle:
    """The bundle at ``path`` (default: the shipped one), or a click error saying why not."""
    from edgetok.bundle import BundleError, default_bundle_path, load_bundle

    try:
        return load_bundle(path or default_bundle_path())
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None


def session_options(threads: int) -> SessionOptions:
    from edgetok.runtime import SessionOptions

    return SessionOptions(threads=threads)


def open_transcriber(
    path: Path | None, threads: int, beam: int, *, local: bool = True
) -> Transcriber:
    """A ``Transcriber`` over the bundle at ``path`` with its own decoder pack, decoding
    with a beam of ``beam``; ``local=False``: segments go to a server, no decoder here."""
    from edgetok.stages import Transcriber

    bundle = open_bundle(path)
    with bundle_errors(bundle):
        return Transcriber(bundle, options=session_options(threads), beam=beam, local=local)


@contextlib.contextmanager
def bundle_errors(bundle: Bundle) -> Iterator[None]:
    """A model of ``bundle`` that cannot be opened is a one-line click error naming the
    manifest once."""
    from edgetok.bundle import BundleError

    try:
        yield
    except (BundleError, ValueError, OSError) as exc:
        where = str(bundle.manifest_path)
        message = str(exc)
        raise click.ClickException(
            message if message.startswith(where) else f"{where}: {message}"
        ) from None


def transcript_summary(transcript: Transcript) -> dict[str, Any]:
    """The JSON-ready numbers of a transcript (``edgetok inspect --json``)."""
    return {
        "text": transcript.text,
        "duration_s": transcript.duration_s,
        "tokens": len(transcript.tokens),
        "segments": len(transcript.starts),
        "tokens_per_s": transcript.tokens_per_s,
        "segments_per_s": transcript.segments_per_s,
        "rtf": transcript.rtf,
        "timings": transcript.timings,
    }


def transcript_line(transcript: Transcript) -> str:
    """One line: duration, tokens/s -> segments/s, real-time factor."""
    t = transcript
    return (
        f"{t.duration_s:.2f} s: {len(t.tokens)} tokens ({t.tokens_per_s:.1f}/s) -> "
        f"{len(t.starts)} segments ({t.segments_per_s:.1f}/s), RTF {t.rtf:.3f}"
    )


def read_audio(path: Path, sample_rate: int) -> Any:
    """``load_audio`` with its ``AudioError`` as a click error."""
    from edgetok.audio import AudioError, load_audio

    try:
        return load_audio(path, sample_rate)
    except AudioError as exc:
        raise click.ClickException(str(exc)) from None
