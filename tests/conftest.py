"""Test-wide settings: a private cache (synthetic data, measurements) for the whole session, and
the ``cache_in_tmp`` fixture for modules that want one of their own."""

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_configure(config):
    if "SCALING_LAB_CACHE" not in os.environ:
        os.environ["SCALING_LAB_CACHE"] = tempfile.mkdtemp(prefix="scaling-lab-test-cache-")


@pytest.fixture(scope="module")
def cache_in_tmp(tmp_path_factory):
    """A cache of the module's own (``pytestmark = pytest.mark.usefixtures("cache_in_tmp")``):
    datasets and measurements made there are not shared with other modules."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
