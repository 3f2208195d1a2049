"""Which module an exported ONNX node came from (torch-free: build tools use it too)."""

from __future__ import annotations

import ast

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def module_scope(node: onnx.NodeProto) -> str | None:
    """The qualified name of the module that made ``node`` (``blocks.0.attn.q``), from the
    dynamo exporter's name-scope metadata; None where the metadata is absent."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else None
    return None
