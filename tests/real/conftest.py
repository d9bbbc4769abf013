"""The real-library tier: every test under tests/real/ carries the ``real`` marker.

Run only this tier with ``pytest -m real``; leave it out with ``pytest -m "not real"``. Each library is
imported with ``pytest.importorskip`` so the tier skips (with the reason) where the ``[real]`` extra is not
installed.
"""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/real/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.real)


@pytest.fixture(autouse=True)
def _one_thread():
    # The models here are tiny: a second intra-op thread buys nothing, and on a busy 2-core machine it
    # made a 32-channel 8x8 conv 60x slower (14.5 ms vs 0.24 ms measured under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
