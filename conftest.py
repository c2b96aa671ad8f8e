"""Root conftest: shared fixture plugins and test ordering."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest_plugins = ["tests.utils.serve_fixtures"]


def pytest_collection_modifyitems(session, config, items):
    """Unit tests first (no Ray), then Serve, then end-to-end; tests that start their own Ray
    cluster (the README's 'genserve up', multi-node) run last, after the shared one is shut down."""
    order = {"unit": 0, "serve": 1, "e2e": 2}

    def key(item):
        if item.get_closest_marker("own_cluster"):
            return 9
        parts = item.nodeid.split("/")
        return order.get(parts[1], 3) if len(parts) > 1 and parts[0] == "tests" else 3

    items.sort(key=key)  # stable: file order is kept within a group
