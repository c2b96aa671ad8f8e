"""Signer credentials: dev CA generation, operator files/env, and every way they can be unfit."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serve.provenance.keys import (
    SignerCredentials,
    SigningConfigError,
    credentials_from_env,
    ensure_dev_credentials,
    generate_dev_ca,
    load_credentials,
    load_trust_anchors,
    resolve_credentials,
    validate_credentials,
)

NOW = dt.datetime.now(dt.timezone.utc)


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_dev_credentials_are_generated_once_and_labelled(tmp_path, caplog):
    caplog.set_level("WARNING")
    creds = ensure_dev_credentials(tmp_path)
    assert creds.is_development and creds.alg == "es256"
    assert "DEVELOPMENT credentials" in caplog.text
    folder = tmp_path / "c2pa"
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "ca.key", "ca.pem", "signer.key", "signer_chain.pem"]
    assert "DEVELOPMENT" in (folder / "README.txt").read_text()
    assert stat.S_IMODE(os.stat(folder / "signer.key").st_mode) == 0o600

    chain = x509.load_pem_x509_certificates(creds.cert_chain_pem)
    leaf, ca = chain
    assert "DEVELOPMENT" in leaf.subject.rfc4514_string()
    leaf.verify_directly_issued_by(ca)  # leaf first
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).critical
    ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in ekus
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert creds.trust_anchor_pem == ca.public_bytes(serialization.Encoding.PEM)

    again = ensure_dev_credentials(tmp_path)
    assert again.cert_chain_pem == creds.cert_chain_pem  # reused, not regenerated


def test_expired_dev_credentials_are_replaced(tmp_path):
    old = ensure_dev_credentials(tmp_path, now=NOW - dt.timedelta(days=2000))
    fresh = ensure_dev_credentials(tmp_path)
    assert fresh.cert_chain_pem != old.cert_chain_pem
    validate_credentials(fresh)


def test_operator_files_load(tmp_path):
    _, _, chain, key = generate_dev_ca()
    creds = load_credentials(_write(tmp_path, "chain.pem", chain), _write(tmp_path, "key.pem", key))
    assert creds.alg == "es256" and not creds.is_development and creds.source == "files"


def test_env_accepts_paths_and_inline_pem(tmp_path):
    _, _, chain, key = generate_dev_ca()
    by_path = credentials_from_env(
        {"GENSERVE_C2PA_CERT": str(_write(tmp_path, "c.pem", chain)), "GENSERVE_C2PA_KEY": str(_write(tmp_path, "k.pem", key))}
    )
    inline = credentials_from_env({"GENSERVE_C2PA_CERT": chain.decode(), "GENSERVE_C2PA_KEY": key.decode(), "GENSERVE_C2PA_ALG": "ES256"})
    assert by_path.source == inline.source == "environment"
    assert inline.alg == "es256"
    assert credentials_from_env({}) is None


def test_env_with_only_one_variable_fails(tmp_path):
    _, _, chain, _ = generate_dev_ca()
    with pytest.raises(SigningConfigError, match="GENSERVE_C2PA_KEY is not set"):
        credentials_from_env({"GENSERVE_C2PA_CERT": chain.decode()})


def test_resolve_prefers_env_over_dev_and_can_refuse_dev(tmp_path):
    _, _, chain, key = generate_dev_ca()
    env = {"GENSERVE_C2PA_CERT": chain.decode(), "GENSERVE_C2PA_KEY": key.decode()}
    assert not resolve_credentials(tmp_path, env=env).is_development
    assert resolve_credentials(tmp_path, env={}).is_development
    with pytest.raises(SigningConfigError, match="no C2PA signing credentials configured"):
        resolve_credentials(tmp_path / "other", env={}, allow_development=False)


def test_missing_key_file_is_a_clear_error(tmp_path):
    _, _, chain, _ = generate_dev_ca()
    with pytest.raises(SigningConfigError, match="private key file .* does not exist"):
        load_credentials(_write(tmp_path, "c.pem", chain), tmp_path / "nope.key")


def test_key_that_does_not_match_certificate(tmp_path):
    _, _, chain, _ = generate_dev_ca()
    _, _, _, other_key = generate_dev_ca()
    with pytest.raises(SigningConfigError, match="does not match the signing certificate"):
        load_credentials(chain, other_key)


def test_expired_certificate(tmp_path):
    _, _, chain, key = generate_dev_ca(now=NOW - dt.timedelta(days=1000), signer_days=30)
    with pytest.raises(SigningConfigError, match="is expired"):
        load_credentials(chain, key)


def test_certificate_without_digital_signature_usage():
    _, _, chain, key = generate_dev_ca(signer_key_usage_digital_signature=False)
    with pytest.raises(SigningConfigError, match="digitalSignature"):
        load_credentials(chain, key)


@pytest.mark.parametrize(
    "ekus, message",
    [((ExtendedKeyUsageOID.SERVER_AUTH,), "needs emailProtection"), ((), "has no extendedKeyUsage")],
)
def test_certificate_with_wrong_extended_key_usage(ekus, message):
    _, _, chain, key = generate_dev_ca(signer_ekus=ekus)
    with pytest.raises(SigningConfigError, match=message):
        load_credentials(chain, key)


def test_self_signed_leaf_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(SigningConfigError, match="self-signed"):
        load_credentials(pem, key_pem)


def _split(chain: bytes) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(chain)]


def test_chain_out_of_order_and_alg_mismatch():
    _, _, chain, key = generate_dev_ca()
    leaf_pem, ca_pem = _split(chain)
    with pytest.raises(SigningConfigError, match="out of order"):
        load_credentials(ca_pem + leaf_pem, key)
    _, other_ca = _split(generate_dev_ca()[2])
    with pytest.raises(SigningConfigError, match="not issued by the next certificate"):
        load_credentials(leaf_pem + other_ca, key)
    with pytest.raises(SigningConfigError, match="needs an RSA key"):
        load_credentials(chain, key, alg="ps256")
    with pytest.raises(SigningConfigError, match="not supported"):
        load_credentials(chain, key, alg="hs256")


def test_garbage_pem_and_trust_anchors(tmp_path):
    with pytest.raises(SigningConfigError, match="not valid PEM"):
        validate_credentials(SignerCredentials(cert_chain_pem=b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n", private_key_pem=b""))
    ca, _, _, _ = generate_dev_ca()
    assert load_trust_anchors(_write(tmp_path, "ta.pem", ca)) == ca
    assert load_trust_anchors(None, env={}) is None
    with pytest.raises(SigningConfigError):
        load_trust_anchors(b"not a pem")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
