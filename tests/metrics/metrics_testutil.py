"""Helpers shared by the metric tests (imported by name: pytest puts this folder on sys.path)."""
import torch

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def randn(*shape, seed=0, dtype=torch.float64):
    """A seeded standard normal tensor (CPU)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
