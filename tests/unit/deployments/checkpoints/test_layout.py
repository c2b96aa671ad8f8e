"""ModelsDir: ComfyUI layout, listing, and rejection of path tricks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployments import constants
from deployments.checkpoints.layout import InvalidModelNameError, ModelNotFoundError, ModelsDir


@pytest.fixture()
def models(tmp_path: Path) -> ModelsDir:
    m = ModelsDir(tmp_path / "models").ensure()
    ck = m.folder("checkpoints")
    (ck / "a.safetensors").write_bytes(b"x")
    (ck / "sub").mkdir()
    (ck / "sub" / "b.ckpt").write_bytes(b"x")
    (ck / "notes.txt").write_text("not a model")
    (ck / "diff").mkdir()
    (ck / "diff" / "model_index.json").write_text("{}")
    (ck / "diff" / "unet").mkdir()
    (ck / "diff" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (ck / "plain_folder").mkdir()
    cn = m.folder("controlnet")
    (cn / "cn").mkdir()
    (cn / "cn" / "config.json").write_text("{}")
    return m


def test_ensure_creates_comfyui_folders(tmp_path: Path) -> None:
    m = ModelsDir(tmp_path / "m").ensure()
    assert sorted(p.name for p in m.root.iterdir()) == sorted(constants.MODEL_KINDS)


def test_list_files_and_diffusers_folders(models: ModelsDir) -> None:
    assert models.list("checkpoints") == ["a.safetensors", "diff", "sub/b.ckpt"]
    assert models.list("controlnet") == ["cn"]
    assert models.list("loras") == []


def test_resolve_ok(models: ModelsDir) -> None:
    assert models.resolve("checkpoints", "a.safetensors").name == "a.safetensors"
    assert models.resolve("checkpoints", "sub/b.ckpt").name == "b.ckpt"
    assert models.resolve("checkpoints", "sub\\b.ckpt").name == "b.ckpt"  # Windows-style
    assert models.resolve("checkpoints", "diff").is_dir()


@pytest.mark.parametrize(
    "name",
    [
        "../loras/x.safetensors",
        "sub/../../x.safetensors",
        "..\\x.safetensors",
        "/etc/passwd",
        "C:/x.ckpt",
        "",
        "  ",
        "a\x00b",
    ],
)
def test_resolve_rejects_path_tricks(models: ModelsDir, name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        models.resolve("checkpoints", name)


def test_resolve_rejects_symlink_escaping_root(models: ModelsDir, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    os.symlink(outside, models.folder("checkpoints") / "evil.safetensors")
    with pytest.raises(InvalidModelNameError, match="outside the models folder"):
        models.resolve("checkpoints", "evil.safetensors")
    assert "evil.safetensors" not in models.list("checkpoints")


def test_symlink_inside_root_is_fine(models: ModelsDir) -> None:
    os.symlink(models.folder("checkpoints") / "a.safetensors", models.folder("checkpoints") / "alias.safetensors")
    assert models.resolve("checkpoints", "alias.safetensors").name == "alias.safetensors"


def test_missing_model_lists_available(models: ModelsDir) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        models.resolve("checkpoints", "nope.safetensors")
    assert isinstance(err.value, FileNotFoundError)
    assert "'a.safetensors'" in str(err.value) and "'sub/b.ckpt'" in str(err.value)
    assert err.value.available == ["a.safetensors", "diff", "sub/b.ckpt"]


def test_non_model_paths_are_not_found(models: ModelsDir) -> None:
    with pytest.raises(ModelNotFoundError, match="not a weight file"):
        models.resolve("checkpoints", "notes.txt")
    with pytest.raises(ModelNotFoundError, match="without model_index.json"):
        models.resolve("checkpoints", "plain_folder")


def test_unknown_kind(models: ModelsDir) -> None:
    with pytest.raises(ValueError, match="Unknown model kind"):
        models.resolve("upscalers", "x.pth")


def test_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(constants.ENV_MODELS_DIR, str(tmp_path / "envmodels"))
    assert ModelsDir.from_env().root == tmp_path / "envmodels"
    monkeypatch.delenv(constants.ENV_MODELS_DIR)
    assert ModelsDir.from_env().root == Path(constants.DEFAULT_MODELS_DIR)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
