"""Signed artifacts: one that was tampered with is refused before it serves anything.

Attacks tried: swapped weights under a signed manifest, a forged manifest with a fresh sha256,
no signature, a signature by another key (test_artifact_safety.py: pickle payloads).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policy_server import artifact, signing
from policy_server.cli import main
from tests.support.policy_server import reseal_manifest, running, start_cli


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys" / "signing-key.pem", tmp_path / "keys" / "signing-key.pub.pem"


@pytest.fixture
def signed(tmp_path: Path, keys) -> Path:
    model = artifact.write_example_model(tmp_path / "signed")
    assert main(["sign", "--artifact", str(model), "--key", str(keys[0])]) == 0
    return model


def test_signed_artifact_loads_with_its_key_as_pem_or_base64(signed: Path, keys) -> None:
    from cryptography.hazmat.primitives import serialization

    assert artifact.load_artifact(str(signed), trusted_keys=[str(keys[1])]).manifest.name == "example-policy"
    pub = serialization.load_pem_public_key(keys[1].read_bytes())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import base64

    assert artifact.load_artifact(str(signed), trusted_keys=[base64.b64encode(raw).decode()])


def _swap_weights(model: Path, tmp_path: Path) -> None:
    other = artifact.write_example_model(tmp_path / "other", seed=99)
    shutil.copy(other / "policy.pt", model / "policy.pt")


def _forge_manifest(model: Path, tmp_path: Path) -> None:
    _swap_weights(model, tmp_path)
    reseal_manifest(model)  # the attacker rewrites the sha256 too: the signature no longer matches


def _drop_signature(model: Path, tmp_path: Path) -> None:
    (model / signing.SIGNATURE_NAME).unlink()


def _sign_with_another_key(model: Path, tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path / "attacker")]) == 0
    assert main(["sign", "--artifact", str(model), "--key", str(tmp_path / "attacker" / "signing-key.pem")]) == 0


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_swap_weights, "sha256 of 'policy.pt'"),
        (_forge_manifest, "does not match manifest.json for any trusted key"),
        (_drop_signature, "has no manifest.sig"),
        (_sign_with_another_key, "does not match manifest.json for any trusted key"),
    ],
)
def test_tampered_signed_artifact_is_refused_before_serving(signed: Path, keys, tmp_path: Path, tamper, message):
    tamper(signed, tmp_path)
    with running(signed, ready=False, trusted_keys=(str(keys[1]),)) as srv:
        with pytest.raises(artifact.ArtifactError) as err:
            srv.wait_ready()
        assert srv.client().get("/readyz")[0] == 503
        assert srv.client().post("/v1/act", {"observation": [0.0] * 8})[0] == 503
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cli_refuses_a_tampered_artifact_with_a_key_from_the_environment(signed: Path, keys, tmp_path) -> None:
    _forge_manifest(signed, tmp_path)
    proc = start_cli("--model", str(signed), env={"POLICY_TRUSTED_KEYS": str(keys[1])})
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("policy-server:")]
    assert len(lines) == 1 and "refused" in lines[0] and "any trusted key" in lines[0]


def test_signing_with_a_key_that_is_not_ed25519_says_so_in_one_line(signed: Path, tmp_path: Path, capsys) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    assert main(["sign", "--artifact", str(signed), "--key", str(tmp_path / "ec.pem")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an Ed25519 private key" in err


def test_without_trusted_keys_signatures_are_not_required(tmp_path: Path) -> None:
    model = artifact.write_example_model(tmp_path / "unsigned")
    assert artifact.load_artifact(str(model)).manifest.version == "v1"


def test_a_bad_trusted_key_says_what_to_pass(signed: Path) -> None:
    with pytest.raises(artifact.ArtifactError, match="neither a PEM public key file nor base64"):
        artifact.load_artifact(str(signed), trusted_keys=["not-a-key"])
