"""Model digests for provenance: computed once, shared through the store, renewed when a model changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from serve.artifacts import ModelHasher
from serve.stores.records import RecordStore


def _touch_later(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


@pytest.fixture()
def records(tmp_path: Path) -> RecordStore:
    return RecordStore(f"sqlite:///{tmp_path / 'shared.sqlite'}")


def test_a_digest_is_computed_once_and_reused_by_other_replicas(tmp_path, records):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x" * 4096)
    replica_a = ModelHasher(records)
    digest = replica_a(model)
    assert digest == hashlib.sha256(b"x" * 4096).hexdigest() and replica_a.computed == 1
    assert replica_a(model) == digest and replica_a.computed == 1  # memoised
    replica_b = ModelHasher(records)  # another replica (or a restart) over the same shared store
    assert replica_b(model) == digest and replica_b.computed == 0


def test_a_changed_model_is_hashed_again(tmp_path, records):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x" * 4096)
    ModelHasher(records)(model)
    model.write_bytes(b"y" * 4096)  # same size: only the modification time tells
    _touch_later(model)
    hasher = ModelHasher(records)
    assert hasher(model) == hashlib.sha256(b"y" * 4096).hexdigest() and hasher.computed == 1
    assert ModelHasher(records)(model) == hashlib.sha256(b"y" * 4096).hexdigest()


def test_a_folder_digest_covers_file_names_and_renames(tmp_path, records):
    folder = tmp_path / "diffusers-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "a.bin").write_bytes(b"1")
    (folder / "b.json").write_bytes(b"2")
    hasher = ModelHasher(records)
    before = hasher(folder)
    (folder / "b.json").rename(folder / "c.json")
    _touch_later(folder)  # the rename updates the folder's mtime (made explicit: coarse clocks)
    after = hasher(folder)
    assert after != before and hasher.computed == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        hasher(tmp_path / "empty")


def test_without_a_store_digests_are_only_memoised(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"z")
    assert ModelHasher()(model) == ModelHasher()(model) == hashlib.sha256(b"z").hexdigest()
