"""Connects the provenance service (watermark + C2PA) to the output sink.

Until provenance is configured this returns no stamper; see serve/provenance/.
"""

from __future__ import annotations

from typing import Any

from serve.config import AppArgs


def build_stamper(args: AppArgs) -> tuple[Any, Any]:
    return None, None
