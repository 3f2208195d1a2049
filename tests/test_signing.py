"""edgetok.signing and ``edgetok sign`` / ``--require-signed`` on copies of the tiny
bundle, with real Ed25519 keys (the cryptography package)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("cryptography")

from edgetok.cli import main  # noqa: E402
from edgetok.signing import SignatureError, new_key, sign_bundle, verify_bundle  # noqa: E402


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "edgetok.key"
    path.parent.mkdir()
    new_key(path)
    return path


def pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def test_new_key_is_private_and_never_overwritten(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub(key).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(SignatureError, match="exists; not overwritten"):
        new_key(key)


def test_signed_bundle_verifies_and_a_changed_manifest_does_not(
    bundle: Path, key: Path, tmp_path: Path
) -> None:
    signature = sign_bundle(bundle, key)
    assert signature == bundle / "bundle.toml.sig"
    assert verify_bundle(bundle / "bundle.toml", [pub(key)]) == pub(key)
    other = tmp_path / "keys" / "other.key"
    new_key(other)
    assert verify_bundle(bundle, [pub(other), pub(key)]) == pub(key)
    with pytest.raises(SignatureError, match="is not by a trusted key"):
        verify_bundle(bundle, [pub(other)])
    manifest = bundle / "bundle.toml"
    manifest.write_text(
        manifest.read_text().replace("global_threshold = 2.5", "global_threshold = 9")
    )
    with pytest.raises(SignatureError, match="the manifest was changed after signing"):
        verify_bundle(bundle, [pub(key)])


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (None, "the bundle is not signed (no bundle.toml.sig)"),
        ("not base64!\n", "not an Ed25519 signature"),
        ("AAAA\n", "not an Ed25519 signature"),
    ],
)
def test_unsigned_or_garbled_signature(
    bundle: Path, key: Path, signature: str | None, message: str
) -> None:
    if signature is not None:
        (bundle / "bundle.toml.sig").write_text(signature)
    with pytest.raises(SignatureError) as error:
        verify_bundle(bundle, [pub(key)])
    assert message in str(error.value)


def test_keys_of_the_wrong_kind(bundle: Path, key: Path) -> None:
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_bundle(bundle, [key])
    with pytest.raises(SignatureError, match="not a PEM private key"):
        sign_bundle(bundle, pub(key))
    with pytest.raises(SignatureError, match="no trusted key"):
        verify_bundle(bundle, [])


def test_cli_sign_then_serve_and_listen_require_it(bundle: Path, tmp_path: Path) -> None:
    """``edgetok sign --new-key`` makes a key and signs; ``serve`` and ``listen`` with
    ``--require-signed`` stop with the reason before loading anything when the manifest
    is altered, the bundle unsigned, or the key not given."""
    runner = CliRunner()
    key = tmp_path / "cli.key"
    result = runner.invoke(main, ["sign", str(bundle), "--key", str(key), "--new-key"])
    assert result.exit_code == 0, result.output
    assert f"signed: {bundle / 'bundle.toml.sig'}" in result.output
    assert verify_bundle(bundle, [pub(key)]) == pub(key)
    required = ["--require-signed", "--trusted-key", str(pub(key))]
    manifest = bundle / "bundle.toml"
    # Signed: serve goes past the check to its own (a TLS certificate without its key).
    result = runner.invoke(
        main, ["serve", "--bundle", str(bundle), "--tls-cert", str(manifest), *required]
    )
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output
    manifest.write_text(manifest.read_text().replace("min_len = 1", "min_len = 2"))
    for command in (["serve", "--bundle", str(bundle)], ["listen", "--bundle", str(bundle)]):
        result = runner.invoke(main, [*command, *required])
        assert result.exit_code == 1
        assert "refused:" in result.output and "changed after signing" in result.output
    (bundle / "bundle.toml.sig").unlink()
    result = runner.invoke(main, ["serve", "--bundle", str(bundle), *required])
    assert result.exit_code == 1 and "the bundle is not signed" in result.output
    result = runner.invoke(main, ["serve", "--bundle", str(bundle), "--require-signed"])
    assert result.exit_code == 2 and "--require-signed needs --trusted-key" in result.output
    result = runner.invoke(main, ["sign", "--key", str(tmp_path / "k")])
    assert result.exit_code == 2 and "give a BUNDLE to sign" in result.output
