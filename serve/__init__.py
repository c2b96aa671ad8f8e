"""genserve serving layer: HTTP ingress, app builder, stores, provenance, CLI."""

__version__ = "0.1.0"
