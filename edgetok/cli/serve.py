"""``edgetok serve``: the remote decoder, segment vectors in over websockets, text out."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetok.cli._common import beam_option, signature_options, token_options

if TYPE_CHECKING:
    from edgetok.bundle import Bundle
    from edgetok.runtime import SessionOptions
    from edgetok.serve_ray import RaySettings


@click.command("serve")
@click.option(
    "--bundle",
    type=click.Path(exists=True, path_type=Path),
    help="Bundle directory (or its bundle.toml) whose decoder to serve; default: the "
    "bundle shipped with edgetok.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@token_options(
    "Bearer token clients must send (env EDGETOK_TOKEN); default: a random one, printed."
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--max-connections", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-unauthenticated",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections that have not sent their upgrade request; a newer one beyond this "
    "closes the oldest.",
)
@click.option(
    "--session-budget-mib",
    default=4.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Memory one session may hold (segment vectors, finals kept); beyond: over_budget.",
)
@click.option(
    "--server-budget-mib",
    default=64.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Memory all sessions together may hold; disconnected sessions are evicted first.",
)
@click.option(
    "--max-frame-bytes",
    default=256 * 1024,
    show_default=True,
    type=click.IntRange(min=64, max=64 << 20),
    help="Larger frames are refused with error too_large and close code 1009.",
)
@click.option(
    "--idle-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a frame after which a connection owed no text is closed (idle).",
)
@click.option(
    "--idle-yield",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="When --max-connections are open, one idle this long gives its place to a new one.",
)
@beam_option
@signature_options("bundle")
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Decode on a Ray Serve deployment that batches requests across devices and "
    "scales its replicas (needs the serve extra; docs/scale.md).",
)
@click.option(
    "--address",
    help="With --ray: the Ray cluster to join (e.g. ray://head:10001 or auto); default: "
    "start a local one.",
)
@click.option(
    "--replicas",
    default="2:auto",
    show_default=True,
    help="With --ray: the fewest and most decoder replicas, MIN:MAX; MAX auto: as many as "
    "the cluster's CPUs hold (one CPU each).",
)
@click.option(
    "--max-batch",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --ray: requests one replica decodes together at most.",
)
@click.option(
    "--batch-wait-ms",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --ray: how long a replica waits for a batch to fill.",
)
def command(
    bundle: Path | None,
    host: str,
    port: int,
    token: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_connections: int,
    max_unauthenticated: int,
    session_budget_mib: float,
    server_budget_mib: float,
    max_frame_bytes: int,
    idle_timeout: float,
    idle_yield: float,
    beam: int,
    use_ray: bool,
    address: str | None,
    replicas: str,
    max_batch: int,
    batch_wait_ms: float,
) -> None:
    """Decode segment vectors sent by edgetok devices into text (protocol: docs/protocol.md).

    Clients must send "Authorization: Bearer TOKEN" and a hello naming this bundle and its
    aggregator. Stop with Ctrl-C or SIGTERM.
    """
    import ssl

    from edgetok import heap
    from edgetok.bundle import BundleError, default_bundle_path, load_bundle
    from edgetok.protocol import max_utterance_segments, wire_identity
    from edgetok.segment_codes import SegmentCodes
    from edgetok.server import Limits, serve
    from edgetok.stages import server_decoder
    from edgetok.token_wire import TokenVectors

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if address is not None and not use_ray:
        raise click.UsageError("--address is for --ray")
    ray_settings = _ray_settings(use_ray, address, replicas, max_batch, batch_wait_ms)
    context = None
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
    elif not _is_loopback(host):
        click.echo(f"warning: serving on {host} without TLS: the token travels in clear", err=True)
    if not token:
        token = secrets.token_urlsafe(24)
        click.echo(f"no --token or EDGETOK_TOKEN: clients must send token {token}", err=True)
    try:
        bundle = bundle or default_bundle_path()
        loaded = load_bundle(bundle)
        decoder = None if ray_settings else server_decoder(loaded, _lean(loaded), beam=beam)
        heap.trim()  # what loading the models freed
        identity = wire_identity(loaded)
        codes = SegmentCodes.of_bundle(loaded)  # protocol 2 clients send these
        tokens = TokenVectors.of_bundle(loaded, _reader_options(loaded))  # or token ids
        longest = max_utterance_segments(loaded)
        limits = Limits(
            max_connections=max_connections,
            max_unauthenticated=max_unauthenticated,
            max_frame_bytes=max_frame_bytes,
            max_segments_per_utterance=longest,
            max_session_bytes=round(session_budget_mib * (1 << 20)),
            max_server_bytes=round(server_budget_mib * (1 << 20)),
            max_sessions=max(256, max_connections),
            idle_timeout_s=idle_timeout,
            idle_yield_s=idle_yield,
            # With --ray a decode thread only waits for the deployment: one per connection
            # lets every device's request join a batch. Here two of the longest utterances
            # are not decoded at once (each holds ~90 MiB while it is, shipped bundle).
            **(
                {"decode_threads": max_connections, "decode_segments": max_connections * longest}
                if ray_settings
                else {"decode_segments": longest * 3 // 2}
            ),
        )
        limits.check_dim(identity.dim)
    except (BundleError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if ray_settings:
        from edgetok import serve_ray

        try:
            decoder = serve_ray.start(bundle, beam, ray_settings)
        except (ValueError, ConnectionError) as exc:
            raise click.ClickException(f"--ray: {exc}") from None
        click.echo(f"decoding on Ray Serve: {ray_settings}", err=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(signum, stop.set)
        options = {"token": token, "host": host, "port": port, "limits": limits, "ssl": context}
        async with serve(decoder, identity, codes=codes, tokens=tokens, **options) as server:
            scheme = "wss" if context else "ws"
            coded = f", segment codes {codes.sha256[:12]}" if codes is not None else ""
            if tokens is not None:
                coded += f", token reader {tokens.wire.sha256[:12]}"
            click.echo(
                f"serving bundle {identity.bundle!r} (aggregator "
                f"{identity.aggregator_sha256[:12]}, dim {identity.dim}{coded}) on "
                f"{scheme}://{host}:{server.port}/",
                err=True,
            )
            await stop.wait()
        click.echo(f"stopped: {server.stats}", err=True)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None
    finally:
        if ray_settings:
            serve_ray.stop(ray_settings)


def _ray_settings(
    use_ray: bool, address: str | None, replicas: str, max_batch: int, batch_wait_ms: float
) -> RaySettings | None:
    """The --ray options, checked; None without --ray (Ray is then never imported)."""
    if not use_ray:
        return None
    try:
        from edgetok.serve_ray import RaySettings
    except ImportError as exc:
        raise click.ClickException(
            f"--ray needs Ray Serve: pip install 'edgetok[serve]' ({exc})"
        ) from None
    low, _, high = replicas.partition(":")
    try:
        return RaySettings(
            address=address,
            min_replicas=int(low),
            max_replicas=None if high == "auto" else int(high or low),
            max_batch=max_batch,
            batch_wait_s=batch_wait_ms / 1000,
        )
    except ValueError as exc:
        raise click.BadParameter(f"{replicas!r}: {exc}", param_hint="--replicas") from None


def _lean(bundle: Bundle) -> SessionOptions | None:
    """ONNX Runtime decoders run without memory patterns: a decoder's input shapes change
    at every step, so each run would plan a new block and grow the arena."""
    from edgetok.runtime import SessionOptions

    roles = ("decoder", "decoder_context", "decoder_step")
    backends = {bundle.models[role].backend for role in roles if role in bundle.models}
    if backends == {"onnxruntime"}:
        return SessionOptions(extra={"memory_pattern": False})
    return None


def _reader_options(bundle: Bundle) -> SessionOptions:
    """The token reader and its aggregator: one thread each run (the decode threads run
    several at once), and no memory patterns (every utterance has its own length)."""
    from edgetok.runtime import SessionOptions

    backend = bundle.models["token_reader"].backend if "token_reader" in bundle.models else ""
    return SessionOptions(extra={"memory_pattern": False} if backend == "onnxruntime" else {})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False
