"""The v2 server decoder: segment vectors -> text, with the pretrained-and-fine-tuned
Whisper decoder's two graphs (``edgetok.train.export.export_whisper_decoder``) and beam
search over its BPE tokens.

``context`` runs once per utterance and gives every layer's cross-attention keys and
values; ``step`` runs the prompt on an empty self-attention cache, then one token per
hypothesis, the hypotheses as its batch. Special tokens other than end-of-text are never
chosen. Torch-free: the server needs only a runtime and the vocabulary file.
"""

from __future__ import annotations

import numpy as np

from edgetok.beam import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY, beam_search, log_softmax
from edgetok.bpe import BpeVocabulary
from edgetok.bundle import Bundle
from edgetok.runtime import Session, SessionOptions

__all__ = ["WhisperDecoderStage"]

#: Whisper tiny.en's prompt: <|startoftranscript|> <|notimestamps|>.
TINY_EN_PROMPT = (50257, 50362)


class WhisperDecoderStage:
    """Segment vectors float32 [S, D] -> text."""

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
        if vectors.ndim != 2:
            raise ValueError(f"segment vectors must be [S, D], got shape {vectors.shape}")
        if vectors.shape[0] == 0:
            return ""
        cross = self.context.run({"vectors": np.ascontiguousarray(vectors[None], np.float32)})
        scorer = _StepScorer(self, cross["cross_keys"], cross["cross_values"])
        limit = min(self.max_tokens, 4 * vectors.shape[0] + 20)
        ids = beam_search(
            scorer,
            eos=self.vocab.eot,
            beam=self.beam,
            max_chars=limit,
            length_penalty=self.length_penalty,
        )
        return self.vocab.decode(ids)


class _StepScorer:
    """Next-token log-probabilities from the step graph with its self-attention cache."""

    def __init__(self, stage: WhisperDecoderStage, cross_k: np.ndarray, cross_v: np.ndarray):
        self.stage = stage
        self.cross_k, self.cross_v = cross_k, cross_v
        self.keys = self.values = stage._empty

    def _run(self, text: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        batch = text.shape[0]
        out = self.stage.step.run(
            {
                "text": text,
                "cross_keys": np.ascontiguousarray(np.repeat(self.cross_k, batch, axis=1)),
                "cross_values": np.ascontiguousarray(np.repeat(self.cross_v, batch, axis=1)),
                "past_keys": keys,
                "past_values": values,
            }
        )
        self.keys, self.values = out["keys"], out["values"]
        logp = log_softmax(out["logits"][:, -1])
        logp[:, self.stage.vocab.eot + 1 :] = -np.inf  # no special tokens but the end
        return logp

    def start(self) -> np.ndarray:
        return self._run(self.stage.prompt, self.keys, self.values)

    def extend(self, parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self._run(
            ids[:, None].astype(np.int64),
            np.ascontiguousarray(self.keys[:, parents]),
            np.ascontiguousarray(self.values[:, parents]),
        )
