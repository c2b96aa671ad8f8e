"""CLIP tokenizer built from the BPE file of the open-clip-torch wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import constants
from deployments.checkpoints import tokenizer as tok_mod


def test_real_clip_ids(demo_models_dir: Path) -> None:
    tok = tok_mod.load_clip_tokenizer(str(demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT / "tokenizer"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("hello world", add_special_tokens=False).input_ids == [3306, 1002]
    assert len(tok) == constants.CLIP_VOCAB_SIZE
    assert tok.pad_token_id == tok.eos_token_id == constants.CLIP_EOS_TOKEN_ID
    assert tok.model_max_length == 77


def test_vocab_build_matches_openai_layout() -> None:
    vocab, merges = tok_mod.build_vocab_and_merges(tok_mod.find_clip_bpe().read_bytes())
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_env_var_path_is_used_and_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = tok_mod.find_clip_bpe()
    copy = tmp_path / "bpe.txt.gz"
    copy.write_bytes(real.read_bytes())
    monkeypatch.setenv(constants.ENV_CLIP_BPE, str(copy))
    assert tok_mod.find_clip_bpe() == copy
    monkeypatch.setenv(constants.ENV_CLIP_BPE, str(tmp_path / "missing.gz"))
    with pytest.raises(FileNotFoundError, match=constants.ENV_CLIP_BPE):
        tok_mod.find_clip_bpe()
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not it")
    monkeypatch.setenv(constants.ENV_CLIP_BPE, str(bad))
    with pytest.raises(tok_mod.ClipBpeUnavailableError, match="sha256"):
        tok_mod.find_clip_bpe()


def test_no_download_gives_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(constants.ENV_CLIP_BPE, raising=False)
    monkeypatch.setenv(constants.ENV_CACHE_DIR, str(tmp_path / "empty-cache"))
    with pytest.raises(tok_mod.ClipBpeUnavailableError, match=constants.ENV_CLIP_BPE):
        tok_mod.find_clip_bpe(allow_download=False)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
