"""Calibration sets for INT8 post-training quantization, made from audio (issue: build targets).

Build-time only: never imported by the device path.
"""
