"""The v2 server decoder: segment vectors -> text, with the pretrained-and-fine-tuned
Whisper decoder's two graphs (``edgetok.train.export.export_whisper_decoder``) and beam
search over its BPE tokens.

``context`` runs once per batch of utterances and gives every layer's cross-attention
keys and values; ``step`` runs the prompt on an empty self-attention cache, then one token
per hypothesis, the hypotheses of every utterance in the batch as its batch: the
utterances' beam searches go in lockstep, so their caches have one length. Utterances of
different segment counts share a step only through a graph with a ``cross_mask`` input
(``edgetok.masked_step``); without one, each segment count is its own lockstep group.
One utterance is a batch of one. Special tokens other than end-of-text are never chosen.
Torch-free: the server needs only a runtime and the vocabulary file.
"""

from __future__ import annotations

import numpy as np

from edgetok.beam import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY, Beam, log_softmax
from edgetok.bpe import BpeVocabulary
from edgetok.bundle import Bundle
from edgetok.runtime import Session, SessionOptions

__all__ = ["CROSS_BATCH", "WhisperDecoderStage"]

#: The step graph input (``edgetok.masked_step``) added to cross-attention scores [B, S]:
#: 0 for a segment, a large negative number for padding.
CROSS_MASK = "cross_mask"
_PADDING = -1e9
#: The batch axis of a step graph's ``cross_keys``/``cross_values`` that may be 1 for
#: rows of one utterance (``edgetok.train.onnx_batch``): its hypotheses share one copy.
CROSS_BATCH = "B or 1"

#: Whisper tiny.en's prompt: <|startoftranscript|> <|notimestamps|>.
TINY_EN_PROMPT = (50257, 50362)


class WhisperDecoderStage:
    """Segment vectors float32 [S, D] -> text, one utterance or a batch of them."""

    def __init__(
        self,
        context: Session,
        step: Session,
        vocab: BpeVocabulary,
        *,
        prompt: tuple[int, ...] = TINY_EN_PROMPT,
        beam: int = DEFAULT_BEAM,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
        max_tokens: int = 224,
    ) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        past = next((spec for spec in step.inputs if spec.name == "past_keys"), None)
        if past is None:
            raise ValueError("the step graph has no past_keys input")
        layers, _, heads, _, head_dim = past.shape
        self._empty = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
        self.context, self.step, self.vocab = context, step, vocab
        self.prompt = np.array([prompt], dtype=np.int64)
        self.beam, self.length_penalty, self.max_tokens = beam, length_penalty, max_tokens
        self.masked = any(spec.name == CROSS_MASK for spec in step.inputs)
        """Whether ``step`` takes a ``cross_mask``: utterances of any lengths batch."""
        cross = next((spec for spec in step.inputs if spec.name == "cross_keys"), None)
        self.broadcasts = cross is not None and cross.shape[1] == CROSS_BATCH
        """Whether ``step`` takes one copy of an utterance's cross-attention inputs for all
        of its hypotheses (batch axis ``CROSS_BATCH``)."""

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, options: SessionOptions | None = None, *, beam: int = DEFAULT_BEAM
    ) -> WhisperDecoderStage:
        """A v2 bundle's ``decoder_context`` and ``decoder_step`` with its ``[text]``."""
        return cls(
            bundle.open("decoder_context", options=options),
            bundle.open("decoder_step", options=options),
            BpeVocabulary.from_file(bundle.vocabulary_path),
            beam=beam,
        )

    def __call__(self, vectors: np.ndarray) -> str:
        return self.decode_batch([vectors])[0]

    def decode_batch(self, batch: list[np.ndarray]) -> list[str]:
        """The text of each utterance's segment vectors [S, D], decoded together."""
        for vectors in batch:
            if vectors.ndim != 2:
                raise ValueError(f"segment vectors must be [S, D], got shape {vectors.shape}")
        texts = [""] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, vectors in enumerate(batch):
            if len(vectors):
                groups.setdefault(0 if self.masked else len(vectors), []).append(i)
        for members in groups.values():
            found = _Lockstep(self, [batch[i] for i in members]).run()
            for i, ids in zip(members, found, strict=True):
                texts[i] = self.vocab.decode(ids)
        return texts


class _Lockstep:
    """The beam searches of a batch of utterances, their hypotheses scored in one step run."""

    def __init__(self, stage: WhisperDecoderStage, batch: list[np.ndarray]) -> None:
        self.stage = stage
        lengths = np.array([len(vectors) for vectors in batch])
        padded = np.zeros((len(batch), lengths.max(), batch[0].shape[1]), np.float32)
        for i, vectors in enumerate(batch):
            padded[i, : len(vectors)] = vectors
        cross = stage.context.run({"vectors": padded})
        self.cross_k, self.cross_v = cross["cross_keys"], cross["cross_values"]
        self.mask = np.where(np.arange(padded.shape[1]) < lengths[:, None], 0, _PADDING)
        self.mask = self.mask.astype(np.float32)
        self.searches = [
            Beam(
                eos=stage.vocab.eot,
                beam=stage.beam,
                max_chars=min(stage.max_tokens, 4 * int(n) + 20),
                length_penalty=stage.length_penalty,
            )
            for n in lengths
        ]
        self._rows_of: tuple[int, ...] = ()
        self._cross: dict[str, np.ndarray] = {}
        self.keys = self.values = stage._empty
        """The self-attention caches of the last step's rows."""

    def _cross_feeds(self, owners: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Cross-attention inputs for rows owned by utterances ``owners`` (one copy when
        they are all one utterance's and the step broadcasts), gathered again only when
        the owners change (when an utterance's search ends)."""
        if owners != self._rows_of:
            alone = self.stage.broadcasts and len(set(owners)) == 1
            index = np.array(owners[:1] if alone else owners)
            self._cross = {
                "cross_keys": np.take(self.cross_k, index, axis=1),
                "cross_values": np.take(self.cross_v, index, axis=1),
            }
            if self.stage.masked:
                self._cross[CROSS_MASK] = self.mask[index]
            self._rows_of = owners
        return self._cross

    def _step(
        self, text: np.ndarray, owners: tuple[int, ...], keys: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        out = self.stage.step.run(
            {"text": text, **self._cross_feeds(owners), "past_keys": keys, "past_values": values}
        )
        self.keys, self.values = out["keys"], out["values"]
        logp = log_softmax(out["logits"][:, -1])
        logp[:, self.stage.vocab.eot + 1 :] = -np.inf  # no special tokens but the end
        return logp

    def run(self) -> list[list[int]]:
        """Every utterance's best token ids."""
        live = [i for i, search in enumerate(self.searches) if not search.done]
        empty = np.repeat(self.stage._empty, len(live), axis=1)
        prompt = np.repeat(self.stage.prompt, len(live), axis=0)
        logp = self._step(prompt, tuple(live), empty, empty)
        first = {i: logp[row : row + 1] for row, i in enumerate(live)}
        starts = {i: row for row, i in enumerate(live)}
        pending = {i: self.searches[i].advance(first[i]) for i in live}
        while any(step is not None for step in pending.values()):
            rows, ids, owners, spans = [], [], [], {}
            for i, step in pending.items():
                if step is None:
                    continue
                parents, next_ids = step
                spans[i] = (len(ids), len(ids) + len(next_ids))
                rows.extend(starts[i] + parents)
                ids.extend(next_ids)
                owners.extend([i] * len(next_ids))
            index = np.array(rows)
            logp = self._step(
                np.array(ids, dtype=np.int64)[:, None],
                tuple(owners),
                np.take(self.keys, index, axis=1),
                np.take(self.values, index, axis=1),
            )
            starts = {i: begin for i, (begin, _) in spans.items()}
            pending = {
                i: self.searches[i].advance(logp[begin:end]) for i, (begin, end) in spans.items()
            }
        return [search.best() for search in self.searches]
