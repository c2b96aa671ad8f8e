"""The CLIP tokenizer of Stable Diffusion 1.x, built without a model hub.

SD1.x uses OpenAI CLIP ViT-L/14's byte-level BPE tokenizer. Its merges file,
``bpe_simple_vocab_16e6.txt.gz``, ships inside the ``open-clip-torch`` wheel on PyPI. We
take the wheel with ``pip download --no-deps`` (installing it would pull torchvision),
read that one member out of the zip, and build ``vocab.json`` + ``merges.txt`` exactly the
way OpenAI's ``clip/simple_tokenizer.py`` builds its encoder. transformers'
:class:`~transformers.CLIPTokenizer` then loads the folder; the ids equal the real CLIP
ids (``"a photo of a cat"`` -> ``[49406, 320, 1125, 539, 320, 2368, 49407]``).

Where the BPE file comes from, in order:

1. ``$GENSERVE_CLIP_BPE``: a local path to the ``.gz`` (offline installs);
2. the genserve cache (``$GENSERVE_CACHE_DIR``, default ``~/.cache/genserve``);
3. the ``open-clip-torch`` wheel from the package registry (then cached).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from deployments import constants

if TYPE_CHECKING:  # NOTE: transformers is imported lazily; it is slow to import.
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

#: Number of BPE merges CLIP keeps: 49408 tokens - 256 bytes - 256 byte</w> - 2 specials.
_NUM_MERGES = 49152 - 256 - 2
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


class ClipBpeUnavailableError(RuntimeError):
    """The CLIP BPE vocabulary could not be found locally nor fetched from the registry."""


def cache_dir() -> Path:
    """Returns genserve's cache folder (``$GENSERVE_CACHE_DIR`` or ``~/.cache/genserve``)."""
    return Path(os.environ.get(constants.ENV_CACHE_DIR) or constants.DEFAULT_CACHE_DIR).expanduser()


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable unicode character table.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points from
    256 upwards, so every byte string becomes a whitespace-free unicode string.

    Returns:
        A dict from each of the 256 byte values to one character, in CLIP's order.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """Builds CLIP's encoder (token -> id) and merge list from the gzipped BPE file.

    Mirrors ``SimpleTokenizer.__init__`` of openai/CLIP: byte characters, the same with
    ``</w>``, one token per merge (lines ``1 .. 48894`` of the file), then the two
    special tokens: 49408 tokens in all.

    Args:
        bpe_gz (`bytes`): Content of ``bpe_simple_vocab_16e6.txt.gz``.

    Returns:
        ``(vocab, merges)``: the token -> id dict and the merge lines (``"a b"``).

    Raises:
        ClipBpeUnavailableError: the file does not have CLIP's size.
    """
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    vocab_list = list(bytes_to_unicode().values())
    vocab_list = vocab_list + [v + "</w>" for v in vocab_list]
    for merge in merges:
        vocab_list.append("".join(merge.split()))
    vocab_list.extend([_BOS, _EOS])
    if len(vocab_list) != constants.CLIP_VOCAB_SIZE:
        raise ClipBpeUnavailableError(
            f"The BPE file yields {len(vocab_list)} tokens, expected {constants.CLIP_VOCAB_SIZE}; "
            "is it really bpe_simple_vocab_16e6.txt.gz?"
        )
    return {token: i for i, token in enumerate(vocab_list)}, merges


def fetch_clip_bpe_from_registry(dest: Path) -> Path:
    """Downloads the ``open-clip-torch`` wheel (no deps) and extracts the BPE file.

    Args:
        dest (`Path`): Where to write ``bpe_simple_vocab_16e6.txt.gz``.

    Returns:
        ``dest``.

    Raises:
        ClipBpeUnavailableError: pip is missing, the registry is unreachable, or the wheel
            does not contain the expected file.
    """
    from deployments.common.wheels import WheelDownloadError, downloaded_wheel

    spec = f"{constants.OPEN_CLIP_DIST}=={constants.OPEN_CLIP_VERSION}"
    try:
        with downloaded_wheel(spec, timeout_s=300, prefix="genserve-openclip-") as wheel, zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(constants.OPEN_CLIP_BPE_MEMBER)
            except KeyError as exc:
                raise ClipBpeUnavailableError(_fetch_help(f"{wheel.name} has no {constants.OPEN_CLIP_BPE_MEMBER}")) from exc
    except WheelDownloadError as exc:
        raise ClipBpeUnavailableError(_fetch_help(str(exc))) from exc
    _check_sha(data, f"the {spec} wheel")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(dest, data)
    return dest


def find_clip_bpe(allow_download: bool = True) -> Path:
    """Locates ``bpe_simple_vocab_16e6.txt.gz``, fetching it once if needed.

    Args:
        allow_download (`bool`, *optional*, defaults to True): Whether to fall back to the
            package registry when no local copy exists.

    Returns:
        Path of a verified BPE file.

    Raises:
        ClipBpeUnavailableError: no local copy and downloading failed or is not allowed.
        FileNotFoundError: ``$GENSERVE_CLIP_BPE`` is set but names a missing file.
    """
    env = os.environ.get(constants.ENV_CLIP_BPE)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${constants.ENV_CLIP_BPE} points at {path}, which does not exist.")
        _check_sha(path.read_bytes(), str(path))
        return path
    cached = cache_dir() / constants.CLIP_BPE_FILENAME
    if cached.is_file():
        return cached
    if not allow_download:
        raise ClipBpeUnavailableError(_fetch_help("downloading is disabled"))
    return fetch_clip_bpe_from_registry(cached)


def write_clip_tokenizer(folder: Path, bpe_path: Path | None = None) -> Path:
    """Writes a CLIPTokenizer folder (``vocab.json``, ``merges.txt``, configs).

    The output is byte-for-byte deterministic.

    Args:
        folder (`Path`): Destination folder (created).
        bpe_path (`Path`, *optional*): The BPE ``.gz``; found with :func:`find_clip_bpe`
            when omitted.

    Returns:
        ``folder``.
    """
    bpe_path = bpe_path or find_clip_bpe()
    vocab, merges = build_vocab_and_merges(bpe_path.read_bytes())
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    _atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": constants.CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    _atomic_write_text(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    _atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n")
    return folder


def tokenizer_cache_dir() -> Path:
    """Returns where :func:`cached_tokenizer_dir` keeps its folder (it may not exist)."""
    return cache_dir() / "clip-vit-large-patch14-tokenizer"


def cached_tokenizer_dir() -> Path:
    """Returns a tokenizer folder in the genserve cache, building it on first use.

    Used for single-file checkpoints, which carry no tokenizer of their own.

    Raises:
        ClipBpeUnavailableError: the BPE file is neither local nor downloadable.
    """
    folder = tokenizer_cache_dir()
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        write_clip_tokenizer(folder)
    return folder


@lru_cache(maxsize=8)
def load_clip_tokenizer(folder: str | None = None) -> CLIPTokenizer:
    """Loads a :class:`~transformers.CLIPTokenizer` from a folder (offline).

    Args:
        folder (`str`, *optional*): A folder with ``vocab.json`` and ``merges.txt``;
            defaults to :func:`cached_tokenizer_dir`.

    Returns:
        The tokenizer, with ``model_max_length`` 77. Treat it as read-only: it is shared.
    """
    from transformers import CLIPTokenizer

    path = folder or str(cached_tokenizer_dir())
    tok = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    tok.model_max_length = constants.CLIP_MAX_LENGTH
    return tok


def _check_sha(data: bytes, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != constants.CLIP_BPE_SHA256:
        raise ClipBpeUnavailableError(
            f"The CLIP BPE file from {where} has sha256 {digest}, expected {constants.CLIP_BPE_SHA256}."
        )


def _fetch_help(reason: str) -> str:
    return (
        f"Cannot get the CLIP BPE vocabulary ({reason}). Either allow access to the package registry "
        f"(`pip download --no-deps {constants.OPEN_CLIP_DIST}=={constants.OPEN_CLIP_VERSION}`), or copy "
        f"{constants.OPEN_CLIP_BPE_MEMBER} out of that wheel and set ${constants.ENV_CLIP_BPE} to its path."
    )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def copy_tokenizer(src: Path, dest: Path) -> Path:
    """Copies a tokenizer folder's files (flat) into ``dest``. Returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copyfile(f, dest / f.name)
    return dest
