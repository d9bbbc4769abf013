"""vector-quantize-pytorch (lucidrains) residual stacks: ``ResidualVQ``, ``ResidualSimVQ`` and
``GroupedResidualVQ``, read stage by stage through the ``VectorQuantize`` / ``SimVQ`` families.

Facts used (research/ecosystem.md §1): stages are ``layers.{q}`` (grouped: ``rvqs.{g}.layers.{q}``, each
group a ``ResidualVQ`` on its slice of the last axis); each stage sees the residual, so the stages are
hooked. ``forward`` returns ``(quantized, ids (..., Q), losses (Q,)[, all_codes])``; the grouped one joins
the groups' outputs on the feature axis and stacks their ids and losses. ``ResidualVQ`` and
``GroupedResidualVQ`` can be deferred as a whole; ``ResidualSimVQ`` cannot (its stages are ``SimVQ``).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Family, Fitted, Passed, Staged, class_name, fit_residual, l2norm, nearest, zero_loss
from .lucidrains import LucidSimVQ, LucidVQ, _is_lucid_vq

__all__ = ["LucidGroupedRVQ", "LucidResidualVQ"]


class LucidResidualVQ(Staged):
    """``ResidualVQ``: one codebook per stage, named ``layers.{q}``; stages are hooked one by one.

    Deferred as a whole and initialised stage by stage: the reservoir keeps the stage-0 input
    (``project_in(x)``); at the switch stage q is fitted by k-means on the residuals left by the already
    fitted stages 0..q-1, the greedy order its own forward uses.
    """

    name = "lucidrains.rvq"
    why_no_defer = LucidSimVQ.why_no_defer  # the only stack it reads but cannot defer: ResidualSimVQ
    _vq, _simvq = LucidVQ(), LucidSimVQ()

    def matches(self, module: nn.Module) -> bool:
        layers = getattr(module, "layers", None)
        return (class_name(module) in ("ResidualVQ", "ResidualSimVQ") and isinstance(layers, nn.ModuleList)
                and len(layers) > 0 and all(_is_lucid_vq(v) or class_name(v) == "SimVQ" for v in layers))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"layers.{q}": layer for q, layer in enumerate(module.layers)}

    def _stage_family(self, stage: nn.Module) -> Family:
        return self._vq if _is_lucid_vq(stage) else self._simvq

    # deferral
    def can_defer(self, module: nn.Module) -> bool:
        return class_name(module) == "ResidualVQ" and all(_is_lucid_vq(v) for v in module.layers)

    def check(self, module: nn.Module) -> None:
        problems = [flag for flag in ("accept_image_fmap", "implicit_neural_codebook", "shared_codebook")
                    if getattr(module, flag, False)]
        if getattr(module, "beam_size", None):
            problems.append("beam_size")
        if any(not v.channel_last or v.heads > 1 for v in module.layers):
            problems.append("channel-first or multi-head stages")
        if problems:
            raise ValueError(f"defer: ResidualVQ with {', '.join(problems)} is not supported; deferral "
                             "handles channel-last ResidualVQ with separate stages (turn these options off)")
        for v in module.layers:
            self._vq.check(v)

    def is_normalized(self, module: nn.Module) -> bool:
        return self._vq.is_normalized(module.layers[0])

    def initted(self, module: nn.Module) -> bool:
        return all(self._vq.initted(v) for v in module.layers)

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.layers[0]._codebook.embed.shape[-1])}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        if kwargs.get("indices") is not None:
            raise ValueError("defer: ResidualVQ.forward(indices=...) is not supported before the switch")
        x = args[0] if args else kwargs["x"]
        mask = kwargs.get("mask")
        with torch.no_grad():
            r = module.project_in(x.detach())
        flat = r.reshape(-1, r.shape[-1])
        q_count = len(module.layers)
        ids = torch.full((flat.shape[0], q_count), -1, dtype=torch.long, device=x.device)
        if self.initted(module):
            res = flat
            for q, cb in enumerate(self.codebooks(module).values()):
                look = l2norm(res) if self.is_normalized(module) else res
                ids[:, q] = nearest(cb, look)
                res = res - cb[ids[:, q]].to(res)
        ind = ids.reshape(*x.shape[:-1], q_count)
        lat = flat if mask is None else r[mask]
        quantized = x
        if mask is not None:
            ind = ind.masked_fill(~mask[..., None], -1)
            fill = torch.zeros_like(x) if module.return_zeros_for_masked_padding else x
            quantized = torch.where(mask[..., None], x, fill)
        losses = zero_loss(module, torch.zeros(q_count, device=x.device, dtype=torch.float32))
        out: tuple = (quantized, ind, losses)
        if kwargs.get("return_all_codes"):
            out = (*out, module.get_codes_from_indices(ind))
        return out, {"": lat}

    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        fitted = fit_residual(reservoirs[""], [int(v.codebook_size) for v in module.layers],
                              self.is_normalized(module), iters=iters, seed=seed)
        return {f"layers.{q}": f for q, f in enumerate(fitted)}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for q, layer in enumerate(module.layers):
            self._vq.write(layer, {"": fitted[f"layers.{q}"]}, tokens_per_step=tokens_per_step)


class LucidGroupedRVQ(LucidResidualVQ):
    """``GroupedResidualVQ``: codebooks ``rvqs.{g}.layers.{q}``.

    Deferred as a whole: each group is a ``ResidualVQ`` on its slice of the features, passed through and
    fitted stage-wise on its own reservoir stream ``rvqs.{g}``, as ``LucidResidualVQ`` does for one stack.
    """

    name = "lucidrains.grouped_rvq"
    why_no_defer = ""
    _rvq = LucidResidualVQ()

    def matches(self, module: nn.Module) -> bool:
        rvqs = getattr(module, "rvqs", None)
        return (class_name(module) == "GroupedResidualVQ" and isinstance(rvqs, nn.ModuleList)
                and all(LucidResidualVQ.matches(self, r) for r in rvqs))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"rvqs.{g}.layers.{q}": layer for g, rvq in enumerate(module.rvqs)
                for q, layer in enumerate(rvq.layers)}

    # deferral: every method delegates group by group to the ResidualVQ family
    def can_defer(self, module: nn.Module) -> bool:
        return all(self._rvq.can_defer(r) for r in module.rvqs)

    def check(self, module: nn.Module) -> None:
        for r in module.rvqs:
            self._rvq.check(r)

    def is_normalized(self, module: nn.Module) -> bool:
        return self._rvq.is_normalized(module.rvqs[0])

    def initted(self, module: nn.Module) -> bool:
        return all(self._rvq.initted(r) for r in module.rvqs)

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {f"rvqs.{g}": self._rvq.streams(r)[""] for g, r in enumerate(module.rvqs)}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        if kwargs.get("indices") is not None or len(args) > 1:
            raise ValueError("defer: GroupedResidualVQ.forward(indices=...) is not supported before the switch")
        x = args[0] if args else kwargs["x"]
        call = {k: kwargs[k] for k in ("mask", "return_all_codes") if kwargs.get(k) is not None}
        outs, lat = [], {}
        for g, (rvq, chunk) in enumerate(zip(module.rvqs, x.chunk(len(module.rvqs), dim=-1))):
            out, rows = self._rvq.passthrough(rvq, (chunk,), call)
            outs.append(out)
            lat[f"rvqs.{g}"] = rows[""]
        # GroupedResidualVQ.forward: outputs joined on the feature axis, ids and losses stacked per group
        quantized, ids, losses, *codes = zip(*outs)
        out: tuple = (torch.cat(quantized, dim=-1), torch.stack(ids), torch.stack(losses),
                      *(torch.stack(c) for c in codes))
        return out, lat

    @torch.no_grad()
    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        return {f"rvqs.{g}.{name}": f for g, r in enumerate(module.rvqs)
                for name, f in self._rvq.fit(r, {"": reservoirs[f"rvqs.{g}"]}, iters=iters, seed=seed).items()}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for g, r in enumerate(module.rvqs):
            mine = {name[len(f"rvqs.{g}."):]: f for name, f in fitted.items() if name.startswith(f"rvqs.{g}.")}
            self._rvq.write(r, mine, tokens_per_step=tokens_per_step)
