"""One registry, one vocabulary: the family that reads a module is the one that names its saved codebooks
and the one that defers it; discovery keys are claimed by at most one family."""
from __future__ import annotations

import fakes
import pytest
import torch
from optional import vqp

import shrinkscope
from shrinkscope.checkpoint import from_state_dict
from shrinkscope.discovery import find_codebooks
from shrinkscope.families import FAMILIES, Family, deferral_family, find_quantizers, get_family

# module factory, the family of the module whose state dict is saved (residual: the stage family)
SAVED = {
    "lucidrains.vq": lambda: vqp.VectorQuantize(dim=4, codebook_size=16),
    "lucidrains.simvq": lambda: vqp.SimVQ(dim=4, codebook_size=16),
    "taming": lambda: fakes.VectorQuantizer2(16, 4, 0.25),
    "taming.ema": lambda: fakes.EMAVectorQuantizer(16, 4, 0.25),
    "taming.gumbel": lambda: fakes.GumbelQuantize(5, 4, 16),
    "llamagen": lambda: fakes.LlamaGenVectorQuantizer(16, 4, 0.25, 0.1, True, True),
    "encodec.vq": lambda: fakes.VectorQuantization(4, 16, codebook_dim=3),
    "dac.vq": lambda: fakes.DACVectorQuantize(4, 16, 3),
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_discovery_names_a_saved_module_as_watch_does(name):
    module = SAVED[name]()
    assert get_family(module).name == name
    (fc,) = find_codebooks(from_state_dict({"quantize": module}))
    assert fc.family == name
    # the effective codebook read from the file is the one the live family reads
    torch.testing.assert_close(fc.codebook, get_family(module).codebooks(module)[""])


def test_every_discovery_key_is_claimed_by_at_most_one_library_family():
    tensors = {}
    for name, make in SAVED.items():
        for k, v in make().state_dict().items():
            tensors[f"{name.replace('.', '_')}_quantize.{k}"] = v
    ckpt = from_state_dict(tensors)
    for key, ref in ckpt.tensors.items():
        seg = key.split(".")
        claims = [f.name for f in FAMILIES[:-1] if f.claims(seg, ref.shape, ckpt.tensors)]  # generic is last
        assert len(claims) <= 1, (key, claims)


def test_a_new_library_is_one_family_class():
    """What docs/adding-a-library.md promises: a Family subclass is found, read and watched."""

    class TinyVQ(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            ids = torch.cdist(x, self.table).argmin(-1)
            return self.table[ids], ids

    class TinyFamily(Family):
        name = "tiny"

        def matches(self, module):
            return type(module).__name__ == "TinyVQ"

        def codebooks(self, module):
            return {"": module.table.detach().float().clone()}

        def extract(self, module, args, kwargs, output):
            from shrinkscope.families.base import Capture
            return [Capture("", output[1], args[0].detach())]

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), TinyVQ())
    assert [(n, f.name) for n, _, f in find_quantizers(model, families=(TinyFamily(),))] == [("1", "tiny")]
    with shrinkscope.watch(model[1], adapter=TinyFamily(), every=0, log_warnings=False) as m:
        model(torch.randn(64, 3))
        (h,) = m.report()
    assert h.num_codes == 8 and h.spread_ratio is not None and h.utilization is not None
    with pytest.raises(TypeError, match="no deferral support"):
        deferral_family(TinyVQ())
