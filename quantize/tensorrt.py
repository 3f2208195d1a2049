"""TensorRT explicit quantization: a QDQ ONNX with symmetric INT8 activations and weights
(what TensorRT's explicit-quantization path requires), made by the ONNX Runtime
quantizer's recipe; the engine is built from it on the device."""

from __future__ import annotations

from onnxruntime.quantization import QuantType

from edgetok.quantize.onnxruntime import OnnxRuntimeQuantizer


class TensorRtQuantizer(OnnxRuntimeQuantizer):
    """FP32 ONNX path -> symmetric-INT8 QDQ ONNX path."""

    backend = "tensorrt"
    activation_type = QuantType.QInt8
    weight_type = QuantType.QInt8
    extra_options = {"ActivationSymmetric": True, "WeightSymmetric": True}
