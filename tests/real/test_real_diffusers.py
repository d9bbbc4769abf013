"""diffusers, the installed package: ``VQModel`` built from a config (quantization happens in ``decode``)."""
import pytest
import torch
from realkit import Case, blobs, check_analyze, check_defer, check_watch, train

import shrinkscope

diffusers = pytest.importorskip("diffusers")
K, D = 32, 4


def _case() -> Case:
    def build():
        torch.manual_seed(0)
        return diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,),
                                 layers_per_block=1, latent_channels=D, num_vq_embeddings=K, vq_embed_dim=D,
                                 norm_num_groups=8, sample_size=8)

    def loss(m, x):
        out = m(x)
        return (out.sample - x).pow(2).mean() + out.commit_loss.mean()

    def latents(m, x):
        return m.encode(x).latents.movedim(1, -1).reshape(-1, D)

    def codebook(m):
        return getattr(m.quantize, "wrapped", m.quantize).embedding.weight.detach()

    return Case(build=build, data=lambda s: blobs(s, (4, 3, 8, 8)), loss=loss, output=lambda m, x: m(x),
                codebooks={"quantize": (K, D)}, usage_stored=set(), latents=latents, codebook=codebook, lr=3e-3)


def test_analyze_save_pretrained(tmp_path):
    case = _case()
    model = train(case, case.build(), 3)
    model.save_pretrained(tmp_path / "vq")
    check_analyze(case, str(tmp_path / "vq" / "diffusion_pytorch_model.safetensors"))


def test_watch(tmp_path):
    check_watch(_case(), tmp_path)


def test_defer_fits_or_refuses():
    case = _case()
    try:
        shrinkscope.defer(case.build().quantize, switch=5)
    except (TypeError, ValueError) as e:
        assert "defer" in str(e)
        return
    check_defer(case, warmup=20, after=20, reservoir=256)
