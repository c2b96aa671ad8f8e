"""Root conftest: shared fixture plugins and test ordering."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest_plugins = ["tests.utils.serve_fixtures"]


def pytest_collection_modifyitems(session, config, items):
    # Tests that start their own Ray cluster (the README's 'genserve up') run after every
    # test that shares the session's Ray instance, which they shut down first.
    own = [i for i in items if i.get_closest_marker("own_cluster")]
    rest = [i for i in items if not i.get_closest_marker("own_cluster")]
    items[:] = rest + own
