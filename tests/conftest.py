"""Test-wide settings: a private cache (synthetic data, measurements) for the whole session."""

import os
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_configure(config):
    if "SCALING_LAB_CACHE" not in os.environ:
        os.environ["SCALING_LAB_CACHE"] = tempfile.mkdtemp(prefix="scaling-lab-test-cache-")
