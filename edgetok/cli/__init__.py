"""The ``edgetok`` command line: one click command per module in this package.

Command modules import only light dependencies at module level; heavy ones (torch,
onnxruntime sessions) are imported inside the command body.
"""

from __future__ import annotations

import importlib

import click

from edgetok import __version__

#: Command modules, each defining ``command`` (a click.Command). Only working commands.
COMMAND_MODULES: tuple[str, ...] = (
    "segment",
    "info",
    "corpus",
    "train",
    "transcribe",
    "eval",
    "inspect",
    "serve",
    "sign",
    "build",
    "bench",
    "listen",
    "devices",
    "demo",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetok")
def main() -> None:
    """edgetok: entropy-compressed semantic speech tokens on edge devices.

    Audio becomes ~50 semantic tokens per second on the device; an entropy model cuts
    them into ~15 segments per second, each fused into one vector that a remote
    language model turns into text.
    """


for _name in COMMAND_MODULES:
    main.add_command(importlib.import_module(f"edgetok.cli.{_name}").command)
