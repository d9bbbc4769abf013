"""A tiny autoencoder around any (q, ids, loss)-returning quantizer, shared by the defer tests."""
from torch import nn


class TinyAE(nn.Module):
    """``Linear(4, 4) -> quantizer -> Linear(4, 4)``; forward returns ``(reconstruction, quantizer loss)``."""

    def __init__(self, quantizer: nn.Module):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.quantizer = quantizer
        self.dec = nn.Linear(4, 4)

    def forward(self, x):
        q, _, loss = self.quantizer(self.enc(x))
        return self.dec(q), loss
