"""``edgetok sign``: sign a bundle's manifest with an Ed25519 key (``edgetok.signing``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sign")
@click.argument("bundle", required=False, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key, PEM (openssl genpkey -algorithm ed25519).",
)
@click.option(
    "--new-key",
    is_flag=True,
    help="First make a new key in --key (mode 0600) and its public key in KEY.pub.",
)
def command(bundle: Path | None, key: Path, new_key: bool) -> None:
    """Sign the manifest of BUNDLE (its directory or bundle.toml) with --key, into
    bundle.toml.sig. serve and listen with --require-signed --trusted-key KEY.pub then
    refuse the bundle if the signature or any file was changed.
    """
    from edgetok import signing

    if bundle is None and not new_key:
        raise click.UsageError("give a BUNDLE to sign, or --new-key to make a key")
    try:
        if new_key:
            public = signing.new_key(key)
            click.echo(f"new key {key}; its public key (to trust): {public}")
        if bundle is not None:
            click.echo(f"signed: {signing.sign_bundle(bundle, key)}")
    except (signing.SignatureError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
