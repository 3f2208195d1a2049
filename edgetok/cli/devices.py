"""``edgetok devices``: the audio inputs ``edgetok listen --device`` can use."""

from __future__ import annotations

import json

import click


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the input devices.")
def command(as_json: bool) -> None:
    """List the audio input devices PortAudio sees (* marks the default)."""
    from edgetok.audio import AudioError, list_devices

    try:
        devices = list_devices()
    except AudioError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(devices))
        return
    if not devices:
        click.echo("no audio input devices", err=True)
    for d in devices:
        mark = "*" if d["default"] else " "
        click.echo(
            f"{mark} {d['index']:3d}  {d['name']}  ({d['hostapi']}, {d['channels']} ch, "
            f"{d['default_samplerate']:.0f} Hz)"
        )
