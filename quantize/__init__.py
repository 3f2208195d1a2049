"""INT8 post-training quantization, one recipe module per backend (issue: build targets).

Build-time only: never imported by the device path.
"""
