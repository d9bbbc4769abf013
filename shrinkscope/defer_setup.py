"""What ``shrinkscope.defer`` checks and decides once, when the wrapper is built: the options (a bad value must
fail at ``defer(...)``, not hours into training), how many recent steps the reservoir spans, and whether the
module is one stage of a residual quantizer (deferring a stage alone starves the stages after it).
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

__all__ = ["check_options", "is_int", "recent_horizon", "residual_owner"]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_options(*, switch: Any, reservoir_size: Any, check_every: Any, min_steps: Any, max_steps: Any,
                  tol: Any, window: Any, kmeans_iters: Any, seed: Any, recent_steps: Any = None) -> None:
    """Every option checked when the wrapper is built: a bad value must fail here, not hours into training."""
    if not (switch == "auto" or (is_int(switch) and switch >= 1)):
        raise ValueError("defer: switch must be 'auto' or a number of warm-up training steps >= 1, "
                         f"got {switch!r}")
    for name, value in (("check_every", check_every), ("window", window), ("kmeans_iters", kmeans_iters)):
        if not is_int(value) or value < 1:
            raise ValueError(f"defer: {name} must be a positive int, got {value!r}")
    if not is_int(min_steps) or not is_int(max_steps) or not 0 <= min_steps <= max_steps:
        raise ValueError(f"defer: expected integers 0 <= min_steps <= max_steps, got {min_steps!r}, "
                         f"{max_steps!r}")
    if max_steps < 1:
        raise ValueError(f"defer: max_steps must be >= 1 (the warm-up needs latents before k-means), got "
                         f"{max_steps}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"defer: tol must be a finite number >= 0, got {tol!r}")
    if reservoir_size is not None and (not is_int(reservoir_size) or reservoir_size < 1):
        raise ValueError(f"defer: reservoir_size must be a positive int or None, got {reservoir_size!r}")
    if not is_int(seed):
        raise ValueError(f"defer: seed must be an int, got {seed!r}")
    if recent_steps is not None and (not is_int(recent_steps) or recent_steps < 1):
        raise ValueError(f"defer: recent_steps must be a positive int or None, got {recent_steps!r}")


def recent_horizon(switch: str | int, check_every: int, recent_steps: int | None) -> int:
    """Training steps the reservoir spans at the switch (when batches bring enough rows).

    Under ``"auto"`` the checks measure the last ``check_every`` steps, so the reservoir spans those. With a
    fixed switch at step S the default is the last quarter of the warm-up (at most ``check_every`` steps):
    spreading the reservoir over all S steps mixed the untrained encoder of step 0 into the k-means, which
    fails when the encoder's output scale drifts during the warm-up (docs/defer.md, "Which latents").
    """
    if recent_steps is not None:
        return recent_steps
    if switch == "auto":
        return check_every
    return max(1, min(check_every, math.ceil(int(switch) / 4)))


def residual_owner(module: nn.Module) -> str | None:
    """Class name of the residual quantizer that holds ``module`` as one of its stages, or None.

    torch keeps no parent links, so the owner is found through the objects that refer to the module: the
    ``_modules`` dict of a ``ModuleList`` (or of the quantizer itself) and, one level up, the module holding
    that list. Runs once, at ``defer`` time.
    """
    import gc

    from .families import FAMILIES, Family

    def holders(m: nn.Module) -> list[nn.Module]:
        out = []
        for d in gc.get_referrers(m):  # the parent's ``_modules`` dict
            if not isinstance(d, dict):
                continue
            for o in gc.get_referrers(d):  # the parent itself, or its ``__dict__`` holding ``_modules``
                if isinstance(o, nn.Module) and o._modules is d:
                    out.append(o)
                elif isinstance(o, dict) and o.get("_modules") is d:
                    out += [p for p in gc.get_referrers(o) if isinstance(p, nn.Module) and p.__dict__ is o]
        return out

    def stage_of(fam: Family, cand: nn.Module) -> bool:
        try:
            return fam.matches(cand) and any(t is module for t in fam.taps(cand).values())
        except Exception:  # noqa: BLE001 - a family that cannot read a module says nothing about it
            return False

    parents = holders(module)
    for cand in parents + [g for p in parents if isinstance(p, nn.ModuleList) for g in holders(p)]:
        if any(stage_of(fam, cand) for fam in FAMILIES):
            return type(cand).__name__
    return None
