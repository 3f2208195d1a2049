"""Rebuild the torch modules of a bundle's FP32 ONNX models, without training checkpoints.

The dynamo exporter keeps parameter names (``stem.conv1.weight``) except for Linear
weights, which become transposed, unnamed MatMul constants; each is found through the
``<module>.bias`` that its MatMul's output is added to, or the exporter's name-scope
metadata. Zero biases and unit norm weights may be folded away; the model's own init
supplies them; weights stored as float16 (v2) are read through their ``Cast``. The
architecture is told by parameter names (v2: a Whisper encoder ``encoder.conv1`` with
the FSQ bottleneck, a frame aggregator ``frames``), the configuration (sizes, layer
counts) from the parameter shapes; the number of attention heads, which no
shape holds, from the rotary frequencies or else by trying each divisor of the width
against the ONNX outputs. ``rebuild`` checks that the torch module reproduces the ONNX
model in onnxruntime before it returns it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgetok.train.fit_semantic import SemanticTokenizerExport
from edgetok.train.models import (
    Aggregator,
    AggregatorConfig,
    Decoder,
    DecoderConfig,
    DecoderExport,
    EntropyLM,
    EntropyLMConfig,
    EntropyLMExport,
    FeatureAggregator,
    FeatureAggregatorConfig,
    TokenizerConfig,
    TokenizerEncoder,
    TokenizerExport,
)
from edgetok.train.onnx_scope import module_scope
from edgetok.train.semantic import BottleneckConfig, SemanticBottleneck
from edgetok.train.whisper import WhisperDims, WhisperEncoder

__all__ = ["example_inputs", "rebuild", "state_dict"]

#: Largest |torch - onnxruntime| accepted, relative to the output's largest magnitude.
TOLERANCE = 1e-4
#: Parameters of training-only parts, which an export leaves out (prefixes).
_NOT_EXPORTED: dict[type, tuple[str, ...]] = {
    SemanticTokenizerExport: tuple(
        f"bottleneck.{name}." for name in ("up", "bypass", "post", "post_norm", "ctc_head")
    ),
}


def state_dict(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """Named parameters and buffers of an exported model, Linear weights recovered.

    The exporter shares one initializer between equal constants (all zero biases become
    one), so Linear and LayerNorm parameters are read from the node that uses them, named
    by its module scope.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    stored = _cast_initializers(model, inits)
    tensors = {
        name: value
        for name, value in inits.items()
        if ("." in name or name == "queries") and name not in stored
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        scope = module_scope(node)
        if node.op_type == "LayerNormalization" and scope is not None:
            for param, name in zip(("weight", "bias"), node.input[1:], strict=False):
                tensors[f"{scope}.{param}"] = inits[name]
        if node.op_type != "MatMul" or node.input[1] not in inits or "." in node.input[1]:
            continue
        add = next((c for c in consumers.get(node.output[0], []) if c.op_type == "Add"), None)
        bias = next((i for i in add.input if i in inits), None) if add is not None else None
        module = scope or (bias.removesuffix(".bias") if bias and bias.endswith(".bias") else None)
        if module is not None and inits[node.input[1]].ndim == 2:
            tensors[f"{module}.weight"] = inits[node.input[1]].T
            if bias is not None:
                tensors[f"{module}.bias"] = inits[bias]
    return {name: torch.from_numpy(np.array(value)) for name, value in tensors.items()}


def _cast_initializers(model: onnx.ModelProto, inits: dict[str, np.ndarray]) -> set[str]:
    """Add to ``inits`` the float32 value of every ``Cast`` of an initializer, under the
    Cast's output name (``edgetok.train.onnx_fp16`` stores large weights as float16 and
    casts them back under the original name); returns the stored names it read."""
    stored = set()
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in inits:
            to = next(a.i for a in node.attribute if a.name == "to")
            if to == onnx.TensorProto.FLOAT:
                inits[node.output[0]] = inits[node.input[0]].astype(np.float32)
                stored.add(node.input[0])
    return stored


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state``; the exporter folds away zero biases and unit norm weights (identity
    Add/Mul), and the model's own init (zeros, ones) is then the right value. The
    training-only parts of a module (``_NOT_EXPORTED``) are not looked for."""
    known = module.state_dict()
    skipped = _NOT_EXPORTED.get(type(module), ())
    missing = [k for k in known if k not in state and not k.startswith(skipped)]
    unfoldable = [
        k
        for k in missing
        if not (
            (k.endswith(".bias") and not known[k].any())
            or (k.endswith(".weight") and "norm" in k and bool((known[k] == 1).all()))
        )
    ]
    if unfoldable:
        raise ValueError(f"{path}: parameters not found in the ONNX model: {unfoldable}")
    module.load_state_dict({k: v for k, v in state.items() if k in known}, strict=False)


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max(int(m.group(1)) for key in state if (m := pattern.match(key)))


def _rotary_heads(inv_freq: torch.Tensor, dim: int) -> tuple[int, float]:
    """(heads, rope base) from the rotary inverse frequencies."""
    head_dim = 2 * inv_freq.shape[0]
    base = float(inv_freq[1]) ** (-head_dim / 2.0)
    return dim // head_dim, round(base, 3)


def _semantic_tokenizer(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    """v2: the Whisper encoder (its heads and the bottleneck block's tried together) and
    the FSQ bottleneck up to its bounded codes."""
    conv1 = state["encoder.conv1.weight"]
    dims = WhisperDims(
        n_mels=conv1.shape[1],
        dim=conv1.shape[0],
        heads=heads,
        encoder_layers=_layers(state, "encoder.blocks."),
        decoder_layers=0,
        vocab=0,
        max_frames=state["encoder.positions"].shape[0],
        max_text=0,
    )
    half_width = state["bottleneck.fsq.half_width"]
    cfg = BottleneckConfig(
        in_dim=dims.dim, heads=heads, levels=tuple(round(2 * float(h) + 1) for h in half_width)
    )
    return SemanticTokenizerExport(WhisperEncoder(dims), SemanticBottleneck(cfg))


def _tokenizer(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    if "encoder.conv1.weight" in state:
        return _semantic_tokenizer(state, heads)
    conv1, pos = state["stem.conv1.weight"], state["stem.pos_conv.weight"]
    layers = _layers(state, "blocks.")
    dim = conv1.shape[0]
    cfg = TokenizerConfig(
        n_mels=conv1.shape[1],
        dim=dim,
        layers=layers,
        heads=heads,
        ff_dim=state["blocks.0.ff.0.weight"].shape[0],
        pos_kernel=pos.shape[2],
        pos_groups=dim // pos.shape[1],
        token_layer=layers,
    )
    return TokenizerExport(TokenizerEncoder(cfg))


def _entropy_lm(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    dim = state["lm.embed.weight"].shape[1]
    heads, base = _rotary_heads(state["lm.rotary.inv_freq"], dim)
    cfg = EntropyLMConfig(
        vocab_size=state["lm.head.weight"].shape[0],
        dim=dim,
        layers=_layers(state, "lm.blocks."),
        heads=heads,
        ff_dim=state["lm.blocks.0.ff.0.weight"].shape[0],
        rope_base=base,
    )
    return EntropyLMExport(EntropyLM(cfg))


def _feature_aggregator(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    """v2: reads the encoder frames of each segment."""
    frames = state["frames.weight"]
    cfg = FeatureAggregatorConfig(
        feature_dim=frames.shape[1],
        dim=frames.shape[0],
        heads=heads,
        ff_dim=state["block.ff.0.weight"].shape[0],
        max_len=state["pos.weight"].shape[0],
    )
    return FeatureAggregator(cfg)


def _aggregator(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    if "frames.weight" in state:
        return _feature_aggregator(state, heads)
    embed, queries = state["embed.weight"], state["queries"]
    cfg = AggregatorConfig(
        vocab_size=embed.shape[0],
        dim=embed.shape[1],
        heads=heads,
        ff_dim=state["block.ff.0.weight"].shape[0],
        max_len=state["pos.weight"].shape[0],
        n_queries=queries.shape[0],
        out_dim=state["proj.weight"].shape[0],
    )
    return Aggregator(cfg)


def _decoder(state: dict[str, torch.Tensor], heads: int) -> nn.Module:
    embed = state["embed.weight"]
    dim = embed.shape[1]
    heads, base = _rotary_heads(state["rotary.inv_freq"], dim)
    cfg = DecoderConfig(
        vocab_size=embed.shape[0],
        prefix_dim=state["prefix_proj.weight"].shape[1],
        dim=dim,
        layers=_layers(state, "blocks."),
        heads=heads,
        ff_dim=state["blocks.0.ff.0.weight"].shape[0],
        rope_base=base,
    )
    return Decoder(cfg)


_BUILDERS: dict[str, Callable[[dict[str, torch.Tensor], int], nn.Module]] = {
    "tokenizer": _tokenizer,
    "entropy_lm": _entropy_lm,
    "aggregator": _aggregator,
    "decoder": _decoder,
}
_ROTARY = {"entropy_lm", "decoder"}


def example_inputs(
    role: str, module: nn.Module, seed: int = 0, segment_len: int | None = None
) -> dict[str, np.ndarray]:
    """Random inputs of the ONNX I/O names for ``role``: batch 1, a dozen steps or fewer
    (shorter than any window), aggregator segments ``segment_len`` wide (default the
    model's longest)."""
    rng = np.random.default_rng(seed)
    if role == "tokenizer":
        conv1 = module.encoder.conv1 if hasattr(module, "encoder") else module.stem.conv1
        return {"mel": rng.normal(-5, 3, (1, 13, conv1.in_channels)).astype("f4")}
    if role == "entropy_lm":
        return {"tokens": rng.integers(0, module.lm.cfg.vocab_size, (1, 11))}
    if role == "aggregator":
        width = segment_len or module.cfg.max_len
        mask = np.arange(width)[None] < rng.integers(1, width + 1, (5, 1))
        if isinstance(module, FeatureAggregator):
            frames = rng.normal(0, 1, (5, width, module.cfg.feature_dim)).astype("f4")
            return {"frames": frames, "mask": mask}
        tokens = rng.integers(0, module.cfg.vocab_size, (5, width))
        return {"tokens": tokens, "mask": mask}
    cfg = module.cfg
    prefix = rng.normal(0, 1, (1, 3, cfg.prefix_dim)).astype("f4")
    feeds = {"prefix": prefix, "text": rng.integers(0, cfg.vocab_size, (1, 5))}
    if isinstance(module, DecoderExport):  # the key/value-cache graph: two past positions
        shape = (cfg.layers, 1, cfg.heads, 2, cfg.dim // cfg.heads)
        feeds["past_keys"] = rng.normal(0, 1, shape).astype("f4")
        feeds["past_values"] = rng.normal(0, 1, shape).astype("f4")
    return feeds


def _max_error(module: nn.Module, session: object, feeds: dict[str, np.ndarray]) -> float:
    """Largest |torch - onnxruntime| over the outputs, relative to their magnitude."""
    with torch.no_grad():
        got = module(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    want = session.run(None, feeds)
    return max(
        float(np.abs(g.numpy() - w).max() / max(np.abs(w).max(), 1.0))
        for g, w in zip(got, want, strict=True)
    )


def rebuild(path: str | Path, role: str) -> nn.Module:
    """The eval-mode torch module of the FP32 ONNX model ``path`` (export I/O order): for
    a decoder with a key/value cache a ``DecoderExport``.

    Raises ValueError when no configuration reproduces the ONNX outputs.
    """
    import onnxruntime as ort

    if role not in _BUILDERS:
        raise ValueError(f"unknown model role {role!r}; roles: {', '.join(_BUILDERS)}")
    model = onnx.load(str(path))
    state = state_dict(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cached = any(i.name == "past_keys" for i in session.get_inputs())
    dim = next((v.shape[-1] for k, v in state.items() if k.endswith("attn.kv.weight")), 0)
    candidates = [0] if role in _ROTARY else [h for h in (4, 6, 8, 2, 1, 16, 3) if dim % h == 0]
    if not dim:
        raise ValueError(f"{path}: not a {role} model (no attention parameters)")
    errors = []
    for heads in candidates:
        try:
            module = _BUILDERS[role](state, heads).eval()
            if cached and isinstance(module, Decoder):
                module = DecoderExport.of(module)
        except KeyError as exc:
            raise ValueError(f"{path}: not a {role} model (no parameter {exc})") from None
        _load(module, state, path)
        error = _max_error(module, session, example_inputs(role, module))
        if error <= TOLERANCE:
            return module
        errors.append(f"heads={heads or 'rotary'}: {error:.2e}")
    raise ValueError(f"{path}: the rebuilt {role} does not reproduce the ONNX model ({errors})")
