"""The arms that the demo and the paper reproduction compare, and the grid each one is tuned on.

- ``early``: the standard recipe (VQ-VAE / taming-style EMA codebook, Euclidean codes): the codebook is
  k-means-initialised on the *untrained* encoder's outputs and quantization is on from step 0.
- ``deferred``: the same model and budget, continuous for the first ``fraction`` of the steps, then k-means on
  the mature encoder's outputs (Zhao et al. 2026; Zhao, Karagodin et al. 2026).
- ``l2``: the early recipe with l2-normalised latents and codes (cosine-similarity lookup, as in ViT-VQGAN and
  vector-quantize-pytorch's ``use_cosine_sim``), the usual first fix people try.
- ``expiry``: the early recipe with dead-code expiry (codes whose EMA usage falls below a threshold move to a
  random latent of the batch; vector-quantize-pytorch's ``threshold_ema_dead_code``).

Every arm gets the same tuning budget: the learning rate (``LRS``) times one knob of its own (``KNOBS``), ten
configurations each, chosen on held-out *validation* reconstruction MSE (a split of the training images,
never the test images; ``python -m shrinkscope.reference.reproduce --plan tune``). ``TUNED`` holds the
choices that run measured; docs/results.md prints the whole grid.
"""
from __future__ import annotations

from dataclasses import dataclass

ARM_NAMES = ("early", "deferred", "l2", "expiry")

#: Adam learning rates of the tuning grid. The first grid (5e-4 .. 2e-3) had every arm choose its largest value, so
#: it was widened upwards until the largest values are worse for every arm (docs/results.md "Tuning").
LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)


@dataclass(frozen=True)
class ArmSettings:
    """One arm's hyperparameters (everything else is shared by all arms).

    Attributes:
        lr: Adam learning rate of the tokenizer.
        decay: EMA decay of the codebook.
        fraction: share of the step budget trained continuously (0 = quantize from step 0).
        l2_normalize: cosine-similarity VQ.
        dead_code_threshold: dead-code expiry threshold in EMA hits per batch (0 = off).
    """

    lr: float = 1e-3
    decay: float = 0.99
    fraction: float = 0.0
    l2_normalize: bool = False
    dead_code_threshold: float = 0.0


def arm_base(name: str) -> ArmSettings:
    """The untuned settings that define arm ``name``."""
    if name == "early":
        return ArmSettings()
    if name == "deferred":
        return ArmSettings(fraction=0.25)
    if name == "l2":
        return ArmSettings(l2_normalize=True)
    if name == "expiry":
        return ArmSettings(dead_code_threshold=1.0)
    raise ValueError(f"unknown arm {name!r}; expected one of {ARM_NAMES}")


#: per arm: (knob, values); crossed with ``LRS`` that is ten configurations per arm
KNOBS = {"early": ("decay", (0.99, 0.95)), "deferred": ("fraction", (0.25, 0.5)),
         "l2": ("decay", (0.99, 0.95)), "expiry": ("dead_code_threshold", (0.5, 2.0))}


def tune_grid(name: str) -> list[ArmSettings]:
    """The ``len(LRS) * 2`` configurations arm ``name`` is tuned over."""
    from dataclasses import replace

    knob, values = KNOBS[name]
    return [replace(arm_base(name), lr=lr, **{knob: v}) for lr in LRS for v in values]


#: The configurations the tuning run chose (lowest mean validation MSE over seeds 0-2; docs/results.md "Tuning",
#: from docs/study-h200-repro.jsonl, 2026-11-30 fourth run). Every choice is interior to ``LRS``: each arm's
#: mean validation MSE is worse at both a smaller and a larger learning rate.
TUNED: dict[str, ArmSettings] = {
    "early": ArmSettings(lr=2e-3, decay=0.95),
    "deferred": ArmSettings(lr=2e-3, fraction=0.25),
    "l2": ArmSettings(lr=2e-3, decay=0.95, l2_normalize=True),
    "expiry": ArmSettings(lr=2e-3, dead_code_threshold=0.5),
}
