"""``edgetok serve --ray``: the server decoder as a Ray Serve deployment.

The websocket front (``edgetok.server``: auth, acks, resume, budgets, fair turns) is
unchanged; only the decoding call goes elsewhere. Each decode is a request to the
``EdgetokDecoder`` deployment, whose replicas gather requests from every device into
batches (``@serve.batch``, at most ``max_batch`` requests or ``batch_wait_s`` of waiting)
and decode each batch in one lockstep beam search (``WhisperDecoderStage.decode_batch``,
the plain server's code path with a batch of one), through a step graph that masks the
padding of shorter utterances (``edgetok.masked_step``). Ray Serve's autoscaler adds and
removes replicas by the requests each one has ongoing. A replica that dies mid-batch is
restarted by Ray; ``RayDecoder`` sends its requests again (decoding is pure), so no
utterance is lost. Ray is the ``serve`` extra and never part of the device install.

In v2 bundles the aggregator runs on the device: a server receives segment vectors, so
the decoder is the only deployment. On the token wire the front rebuilds the vectors
itself (the bundle's token reader and aggregator, a few ms an utterance) before it sends
them to the deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from edgetok.bundle import load_bundle
from edgetok.masked_step import open_masked_step
from edgetok.runtime import SessionOptions
from edgetok.whisper_decoding import WhisperDecoderStage

__all__ = ["APP", "DEPLOYMENT", "RayDecoder", "RaySettings", "start", "stop"]

log = logging.getLogger(__name__)

APP = "edgetok"
DEPLOYMENT = "EdgetokDecoder"
"""Replica processes are titled ``ray::ServeReplica:edgetok:EdgetokDecoder``."""


@dataclass(frozen=True, kw_only=True)
class RaySettings:
    """Where the deployment runs and how it batches and scales."""

    address: str | None = None
    """An existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None starts
    a local one for this process."""
    min_replicas: int = 2
    """Two from the start: as many decodes at once as the plain server's two decode
    threads, and one replica still serving while a killed one restarts."""
    max_replicas: int | None = None
    """None: as many as the cluster's CPUs hold at ``threads`` each (at least
    ``min_replicas``), so the autoscaler never asks for replicas that cannot be placed."""
    max_batch: int = 8
    """Requests decoded together at most."""
    batch_wait_s: float = 0.02
    """How long a replica waits for a batch to fill before decoding what it has."""
    threads: int = 1
    """ONNX Runtime threads (and Ray CPUs) per replica."""
    retry_for_s: float = 120.0
    """How long a request is sent again while replicas are dead or restarting."""

    def __post_init__(self) -> None:
        if self.min_replicas < 1 or (
            self.max_replicas is not None and self.max_replicas < self.min_replicas
        ):
            raise ValueError("replicas: need 1 <= min <= max")
        if self.max_batch < 1 or self.threads < 1 or self.batch_wait_s < 0:
            raise ValueError("max_batch and threads must be >= 1, batch_wait_s >= 0")


@serve.deployment(name=DEPLOYMENT)
class BatchDecoder:
    """One replica: the bundle's decoder with the masked step graph, fed in batches."""

    def __init__(self, bundle: str, beam: int, max_batch: int, wait_s: float, threads: int):
        loaded = load_bundle(Path(bundle))
        options = SessionOptions(threads=threads)
        plain = WhisperDecoderStage.from_bundle(loaded, options, beam=beam)
        step = open_masked_step(loaded, options)
        self.stage = WhisperDecoderStage(plain.context, step, plain.vocab, beam=beam)
        self.decode.set_max_batch_size(max_batch)
        self.decode.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def decode(self, batch: list[np.ndarray]) -> list[str]:
        """Texts of a batch of requests, decoded off the replica's event loop."""
        return await asyncio.to_thread(self.stage.decode_batch, batch)


class RayDecoder:
    """The front's decoder: ``decode(vectors)`` is a request to the deployment, sent
    again while the replica it went to is dead or restarting, or when no answer came in
    ``answer_s`` (doubling at each try: a request can be stranded on a killed replica).
    Decoding is pure, so a request sent twice still gives one text. Thread-safe; blocks."""

    def __init__(
        self, handle: serve.handle.DeploymentHandle, retry_for_s: float, answer_s: float = 60.0
    ) -> None:
        self.handle, self.retry_for_s, self.answer_s = handle, retry_for_s, answer_s
        self.resent = 0
        """Requests sent again after a replica died or did not answer."""

    def decode(self, vectors: np.ndarray) -> str:
        deadline, wait = time.monotonic() + self.retry_for_s, self.answer_s
        while True:
            response = self.handle.decode.remote(vectors)
            try:
                return response.result(timeout_s=wait)
            except (RayActorError, ActorUnavailableError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                if isinstance(exc, TimeoutError):
                    response.cancel()
                    wait *= 2
                self.resent += 1
                log.warning("decoder request failed (%r); sending the request again", exc)
                time.sleep(0.2)


def start(bundle: Path, beam: int, settings: RaySettings) -> RayDecoder:
    """Join the cluster at ``settings.address`` (or start a local one), deploy the
    decoder of ``bundle`` and return the front's handle to it. Raises ValueError for a
    bundle without Whisper decoder graphs, ConnectionError for a cluster not reached."""
    if "decoder_step" not in load_bundle(bundle).models:
        raise ValueError(f"{bundle}: --ray serves v2 bundles (Whisper decoder graphs) only")
    ray.init(
        # "local": a Ray of our own even where `ray start` left one (ray.init would join it)
        address=settings.address or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    serve.start(proxy_location="Disabled")  # the websocket front is edgetok's own
    app = BatchDecoder.options(
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": _max_replicas(settings),
            "target_ongoing_requests": settings.max_batch,
            "upscale_delay_s": 3.0,
            "downscale_delay_s": 60.0,
        },
        max_ongoing_requests=2 * settings.max_batch,
        max_constructor_retry_count=3,  # a replica that cannot load fails the start soon
        ray_actor_options={"num_cpus": settings.threads},
    ).bind(str(bundle.resolve()), beam, settings.max_batch, settings.batch_wait_s, settings.threads)
    handle = serve.run(app, name=APP, route_prefix=None)
    return RayDecoder(handle, settings.retry_for_s)


def _max_replicas(settings: RaySettings) -> int:
    """``settings.max_replicas``, or as many replicas as the cluster's CPUs hold."""
    if settings.max_replicas is not None:
        return settings.max_replicas
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return max(settings.min_replicas, cpus // settings.threads)


def stop(settings: RaySettings) -> None:
    """Remove the deployment from a local cluster and stop it; on a cluster joined by
    address the deployment stays for the next front."""
    if settings.address is None:
        serve.shutdown()
    ray.shutdown()
