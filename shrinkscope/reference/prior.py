"""A small GPT-style autoregressive prior over raster-ordered token grids.

Standard decoder-only transformer (pre-norm blocks, causal self-attention, learned positions). A
begin-of-sequence token (id ``num_codes``) conditions the first position, so sampling starts from nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass
class PriorConfig:
    """Prior hyperparameters (saved in reference checkpoints).

    Attributes:
        num_codes: vocabulary size K of the tokenizer (the BOS id is K).
        seq_len: tokens per item (h * w of the token grid).
        n_layer / n_head / n_embd: transformer depth, heads and width.
        dropout: dropout on attention and MLP outputs.
    """

    num_codes: int = 512
    seq_len: int = 16
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Block(nn.Module):
    def __init__(self, c: PriorConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.attn = nn.MultiheadAttention(c.n_embd, c.n_head, dropout=c.dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd),
                                 nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TokenPrior(nn.Module):
    """Causal transformer ``p(t_i | t_<i)`` over flattened token grids.

    Args:
        config: a ``PriorConfig``.

    Example:
        >>> prior = TokenPrior(PriorConfig(num_codes=16, seq_len=4, n_embd=32))
        >>> prior.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 4])
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        c = self.config = config
        self.tok = nn.Embedding(c.num_codes + 1, c.n_embd)  # +1: the BOS token
        self.pos = nn.Parameter(torch.zeros(c.seq_len, c.n_embd))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.num_codes, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(c.seq_len, c.seq_len, dtype=torch.bool), 1),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits.

        Args:
            tokens: ``(B, T)`` int64 prefix of length ``T <= seq_len`` (without the BOS token).

        Returns:
            ``(B, T + 1, K)`` logits for positions 0..T, capped at ``seq_len`` positions.
        """
        b = tokens.shape[0]
        bos = torch.full((b, 1), self.config.num_codes, dtype=torch.long, device=tokens.device)
        x = torch.cat([bos, tokens], 1)[:, : self.config.seq_len]
        t = x.shape[1]
        h = self.tok(x) + self.pos[:t]
        for blk in self.blocks:
            h = blk(h, self.mask[:t, :t])
        return self.head(self.ln_f(h))

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``(B, seq_len)`` token sequences (nats)."""
        if tokens.dim() != 2 or tokens.shape[1] != self.config.seq_len:
            raise ValueError(f"TokenPrior.loss: expected (B, {self.config.seq_len}) tokens, got {tuple(tokens.shape)}")
        logits = self.forward(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, batch: int = 2048) -> torch.Tensor:
        """Draw ``n`` token sequences.

        Args:
            n: number of samples.
            temperature: softmax temperature (> 0).
            top_k: keep only the ``top_k`` most likely tokens at each step (None: all).
            generator: generator on the model's device, for reproducible draws.
            batch: samples drawn in parallel.

        Returns:
            ``(n, seq_len)`` int64 tokens.
        """
        if temperature <= 0:
            raise ValueError(f"TokenPrior.sample: expected temperature > 0, got {temperature}")
        was_training = self.training
        self.eval()
        dev = self.pos.device
        out = []
        for s in range(0, n, batch):
            m = min(batch, n - s)
            seq = torch.empty(m, 0, dtype=torch.long, device=dev)
            for _ in range(self.config.seq_len):
                logits = self.forward(seq)[:, -1] / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)
                seq = torch.cat([seq, nxt], 1)
            out.append(seq)
        self.train(was_training)
        return torch.cat(out)
