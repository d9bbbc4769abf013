"""The real-library tier: every test under tests/real/ carries the ``real`` marker.

Run only this tier with ``pytest -m real``; leave it out with ``pytest -m "not real"``. Each library is
imported with ``pytest.importorskip`` so the tier skips (with the reason) where the ``[real]`` extra is not
installed.
"""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/real/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.real)
