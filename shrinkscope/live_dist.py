"""``analyze(model, data)`` under ``torch.distributed``: every rank runs its own shard, then the ranks merge.

The merge itself is a report's (``Monitor._reduce``: counts summed, reservoirs gathered, fingerprints compared).
What a one-off analysis adds: the ranks first agree that every rank succeeded (one all-reduce of flags, so a
rank whose forward failed stops every rank with an error instead of leaving the others waiting in the next
collective), and a codebook that differs across ranks is measured with rank 0's copy on every rank, so every
rank returns the same result.
"""
from __future__ import annotations

from typing import Any

import torch

from .live_labels import LiveError

__all__ = ["agree", "distributed", "from_rank0", "world_size"]



def distributed(group: Any) -> tuple[bool, int]:
    """``(whether more than one rank runs, this rank)`` in ``group`` (the world when None)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        return True, dist.get_rank(group)
    return False, 0


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (1 without ``torch.distributed``)."""
    return int(torch.distributed.get_world_size(group)) if distributed(group)[0] else 1


def from_rank0(cb: torch.Tensor, device: torch.device, group: Any) -> torch.Tensor:
    """Rank 0's copy of a codebook on every rank (one broadcast; every rank calls it for the same keys, since
    the divergence verdict comes from all-gathered fingerprints)."""
    import torch.distributed as dist

    buf = cb.detach().to(device=device, dtype=torch.float32).contiguous()
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast(buf, src=src, group=group)
    return buf.to(cb.device)


def agree(error: LiveError | None, changed: bool, batches: int, device: torch.device, group: Any) -> int:
    """One all-reduce after the run, before any other collective: a rank that failed (or whose quantizer
    changed in eval mode) stops every rank with an error instead of leaving them waiting. Returns the
    number of batches run over all ranks."""
    import torch.distributed as dist

    flags = torch.tensor([int(error is not None), int(changed), batches], dtype=torch.int64, device=device)
    dist.all_reduce(flags, group=group)
    if error is not None:
        raise error
    if int(flags[0]):
        raise LiveError(f"{int(flags[0])} other rank(s) failed while running their shard of the data (see their "
                        "error); no rank measured anything")
    if int(flags[1]) and not changed:
        raise LiveError("running the data changed a quantizer's state on another rank even in eval mode; the "
                        "model was restored (see that rank's error)")
    return int(flags[2])
