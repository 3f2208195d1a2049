"""Calibration sets for INT8 post-training quantization, made from audio.

``read_source`` + ``pick`` choose N utterances (stratified by duration and voice) from a
corpus directory, a manifest or a directory of audio; ``make_calibration`` turns them
into each model's inputs through the FP32 bundle, cached. Every quantizer reads a
``CalibrationSet`` through ``reader(role)``: a sequence of feed dicts named like the
model's inputs. Build-time only: never imported by the device path.
"""

from edgetok.calibration.sets import CalibrationSet, Feeds, make_calibration
from edgetok.calibration.sources import Utterance, heldout_source, pick, read_source

__all__ = [
    "CalibrationSet",
    "Feeds",
    "Utterance",
    "heldout_source",
    "make_calibration",
    "pick",
    "read_source",
]
