"""Fixtures for the metric tests: the devices to run on (CUDA is skipped when absent)."""
import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
