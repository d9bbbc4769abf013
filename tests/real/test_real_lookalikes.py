"""Code on no package index, as look-alikes written from its public layout (class, attribute and buffer names,
forward signatures; none of its code): LlamaGen's ``VectorQuantizer`` (the stand-in in tests/families/fakes.py)
with its ``{'model', 'ema'}`` files, the taming-derived quantizer of Paper B with a ``usage_ema`` buffer, and
moshi's residual quantizers (moshi is on PyPI but requires torch<2.10).

Also the file formats every loader meets: a training checkpoint holding numpy arrays, and a Lightning 1.0-era
``.ckpt`` whose callbacks are keyed by class.
"""
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from realkit import Case, blobs, check_defer, check_trained_state_dict, check_watch, train
from torch import nn
from torch.nn import functional as F

import shrinkscope
from shrinkscope.checkpoint import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "families"))
import fakes

K, D = 64, 8


class LlamaGenVQ(nn.Module):
    """``VQModel``: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder (tiny convs here)."""

    def __init__(self, channels=32):
        super().__init__()
        self.encoder = nn.Conv2d(3, channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(channels, D, 1)
        self.quantize = fakes.LlamaGenVectorQuantizer(K, D, 0.25, 0.0, l2_norm=True, show_usage=True)
        self.post_quant_conv = nn.Conv2d(D, channels, 1)
        self.decoder = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        q, (l1, l2, l3, _), _ = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(q)), l1 + l2 + l3


def _trained_llamagen(steps=10):
    torch.manual_seed(0)
    m = LlamaGenVQ()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for s in range(steps):
        x = blobs(s, (4, 3, 8, 8))
        rec, loss = m(x)
        opt.zero_grad()
        ((rec - x).pow(2).mean() + loss).backward()
        opt.step()
    return m


def test_llamagen_model_and_ema_file(tmp_path):
    """LlamaGen's ``update_ema`` copies parameters only: the EMA copy's ``codebook_used`` stays zeros, which
    is no evidence of use (not "100% dead"); the trained model's FIFO is read."""
    m = _trained_llamagen()
    ema = {k: (torch.zeros_like(v) if k.endswith("codebook_used") else v.clone()) for k, v in m.state_dict().items()}
    torch.save({"model": m.state_dict(), "ema": ema, "steps": 10}, tmp_path / "ckpt.pt")
    res = shrinkscope.analyze(str(tmp_path / "ckpt.pt"))
    by = {e.health.name: e for e in res.entries}
    assert len(by) == 2, list(by)
    model_e = next(e for n, e in by.items() if "ema" not in n)
    ema_e = next(e for n, e in by.items() if "ema" in n)
    assert (model_e.health.num_codes, model_e.health.dim) == (K, D)
    assert model_e.found.counts is not None
    assert ema_e.found.counts is None, "an all-zero codebook_used FIFO was read as usage"
    assert ema_e.health.dead_code_ratio is None


def _llamagen_latents(m, n=4):
    with torch.no_grad():
        return torch.cat([m.quant_conv(m.encoder(blobs(-1 - i, (4, 3, 8, 8)))) for i in range(n)])


def test_llamagen_latents_go_through_the_codebooks_normalisation(tmp_path):
    """analyze l2-normalises LlamaGen's codebook; ``--latents`` must get the same transform."""
    m = _trained_llamagen()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    z = _llamagen_latents(m)  # (B, D, H, W), raw encoder output
    raw = shrinkscope.analyze(str(tmp_path / "m.pt"), latents=z).entries[0].health
    normed = shrinkscope.analyze(str(tmp_path / "m.pt"), latents=F.normalize(z, dim=1)).entries[0].health
    assert raw.spread_ratio == pytest.approx(normed.spread_ratio, rel=1e-4)
    assert raw.quantization_error == pytest.approx(normed.quantization_error, rel=1e-4)


def test_ambiguous_latents_layout_is_refused_with_the_fix(tmp_path):
    """(B, 32, 8, 8) for a D=8 codebook: axis 1 is not D, the last axis is D only by accident of the grid."""
    m = _trained_llamagen()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    z = torch.randn(4, 32, 8, 8)
    with pytest.raises(CheckpointError, match="(?i)ambiguous|channel|layout"):
        shrinkscope.analyze(str(tmp_path / "m.pt"), latents=z)


def test_paper_b_usage_ema_is_read(tmp_path):
    """Paper B's taming-derived quantizer keeps usage in ``usage_ema`` (K,) next to ``embedding``."""
    torch.manual_seed(0)
    usage = torch.rand(K) * (torch.rand(K) > 0.3)
    sd = {"quantize.embedding.weight": torch.randn(K, D), "quantize.usage_ema": usage,
          "quantize.vq_step_counter": torch.tensor(500), "quantize.last_n_respawned": torch.tensor(3)}
    torch.save(sd, tmp_path / "last.pt")
    e = shrinkscope.analyze(str(tmp_path / "last.pt")).entries[0]
    assert e.found.counts is not None and e.found.usage_source == "usage_ema"
    assert e.health.dead_code_ratio == pytest.approx(float((usage == 0).double().mean()))


def test_residual_latents_need_residuals(tmp_path):
    """--latents of the encoder output for an RVQ: stage 0 gets them, later stages get the residual left by
    the stages before (computed from the codebooks), or a clear note when that is not possible."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=D, codebook_size=K, num_quantizers=3)
    x = blobs(0, (8, D, 64)).movedim(1, -1)
    rvq.train()
    for _ in range(3):
        rvq(x)
    torch.save(rvq.state_dict(), tmp_path / "rvq.pt")
    res = shrinkscope.analyze(str(tmp_path / "rvq.pt"), latents=x.reshape(-1, D))
    for i, e in enumerate(res.entries):
        assert e.health.spread_ratio is not None
        if i:
            assert any("residual" in n for n in e.notes), e.notes


def test_numpy_arrays_in_a_training_checkpoint_load_safely(tmp_path):
    """Paper B's ``last.pt`` holds numpy arrays (e.g. a saved RNG state): safe loading must accept them."""
    sd = {"quantize.embedding.weight": torch.randn(K, D)}
    torch.save({"state_dict": sd, "np_rng": np.random.default_rng(0).random(4), "epoch": 3}, tmp_path / "last.pt")
    res = shrinkscope.analyze(str(tmp_path / "last.pt"))
    assert [(e.health.num_codes, e.health.dim) for e in res.entries] == [(K, D)]


def test_lightning_1_0_callbacks_keyed_by_class_load_safely(tmp_path):
    """Lightning 1.0 saved ``callbacks`` keyed by the callback class; analyze needs no --trust-checkpoint."""
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.callbacks import ModelCheckpoint

    sd = {"quantize.embedding.weight": torch.randn(K, D)}
    torch.save({"state_dict": sd, "epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.0.8",
                "callbacks": {ModelCheckpoint: {"best_model_score": None, "dirpath": "ckpts"}}},
               tmp_path / "old.ckpt")
    assert pl.__version__
    res = shrinkscope.analyze(str(tmp_path / "old.ckpt"))
    assert [(e.health.num_codes, e.health.dim) for e in res.entries] == [(K, D)]


# ---- moshi -------------------------------------------------------------------------------------------
# moshi (kyutai-labs) requires torch<2.10: a look-alike of ``moshi.quantization`` written from its public layout
# (class names, buffers, forward signatures and return types), behaving as its docstrings describe: k-means
# init on a stage's first training batch once the stage before it is initialised, EMA of ``cluster_usage`` and
# ``embedding_sum``, a codebook cached by the ``embedding`` property, expiry of rarely used codes.

class _CodebookForwardResult(NamedTuple):
    quantized: torch.Tensor
    codes: torch.Tensor
    metrics: dict


class _VQForwardResult(NamedTuple):
    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    metrics: dict


@dataclass
class QuantizedResult:
    x: torch.Tensor
    codes: torch.Tensor
    bandwidth: torch.Tensor
    penalty: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)


class EuclideanCodebook(nn.Module):
    def __init__(self, dim, codebook_size, decay=0.99, epsilon=1e-5, threshold_usage_ratio=0.1,
                 replaced_usage_ratio=1.0, check_unused_every=5):
        super().__init__()
        self.dim, self.codebook_size, self.decay, self.epsilon = dim, codebook_size, decay, epsilon
        self.threshold_usage_ratio, self.replaced_usage_ratio = threshold_usage_ratio, replaced_usage_ratio
        self.check_unused_every = self._next_unused_check = check_unused_every
        self._cached_initialized = False
        self.register_buffer("_initialized", torch.tensor([False], dtype=torch.float))
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, dim))
        self.register_buffer("_embedding", None, persistent=False)

    @property
    def embedding(self):
        if self._embedding is None:  # cached as a buffer on first read, as moshi does
            self.register_buffer("_embedding", self.embedding_sum / self.cluster_usage.clamp(min=self.epsilon)[:, None],
                                 persistent=False)
        return self._embedding

    @property
    def initialized(self):
        if not self._cached_initialized:
            self._cached_initialized = bool(self._initialized.item())
        return self._cached_initialized

    def _init_embedding(self, x):
        if self.initialized:
            return
        means = x[torch.randperm(x.shape[0])[: self.codebook_size]]
        for _ in range(10):
            ids = torch.cdist(x, means).argmin(-1)
            bins = torch.bincount(ids, minlength=self.codebook_size)
            sums = torch.zeros_like(means).index_add_(0, ids, x)
            means = torch.where((bins == 0)[:, None], means, sums / bins.clamp(min=1)[:, None])
        self.embedding_sum.copy_(means * bins[:, None])
        self.cluster_usage.copy_(bins.float())
        self._initialized.fill_(1)

    def _quantize(self, x):
        return torch.cdist(x, self.embedding).argmin(-1)

    def encode(self, x):
        return self._quantize(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1])

    def decode(self, codes):
        return F.embedding(codes, self.embedding)

    def forward(self, x, initialize=True):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.training and initialize:
            self._init_embedding(x.detach())
        flat = self._quantize(x)
        codes = flat.view(*shape[:-1])
        quantized = self.decode(codes)
        metrics = {}
        if self.training:
            if self.initialized:
                self._next_unused_check -= 1
                if self._next_unused_check <= 0:
                    self._next_unused_check = self.check_unused_every
                    usage_floor = self.replaced_usage_ratio * self.cluster_usage.sum() / self.codebook_size
                    expired = self.cluster_usage < self.threshold_usage_ratio * self.cluster_usage.sum() / self.codebook_size
                    fresh = x.detach()[torch.randint(0, x.shape[0], (self.codebook_size,))]
                    self.embedding_sum[:] = torch.where(expired[:, None], usage_floor * fresh, self.embedding_sum)
                    self.cluster_usage[:] = torch.where(expired, usage_floor, self.cluster_usage)
            counts = torch.zeros_like(self.cluster_usage).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
            self.cluster_usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            sums = torch.zeros_like(self.embedding_sum).index_add_(0, flat, x.detach())
            self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            self.register_buffer("_embedding", None)
        return _CodebookForwardResult(quantized, codes, metrics)


class VectorQuantization(nn.Module):
    def __init__(self, dim, codebook_size, codebook_dim=None, decay=0.99, epsilon=1e-5, threshold_usage_ratio=0.1,
                 **kwargs):
        super().__init__()
        codebook_dim = codebook_dim or dim
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else nn.Identity()
        self.epsilon = epsilon
        self._codebook = EuclideanCodebook(codebook_dim, codebook_size, decay, epsilon, threshold_usage_ratio, **kwargs)
        self.codebook_size = codebook_size

    @property
    def initialized(self):
        return self._codebook.initialized

    def encode(self, x):
        return self._codebook.encode(self.project_in(x.transpose(1, 2)))

    def decode(self, codes):
        return self.project_out(self._codebook.decode(codes)).transpose(1, 2)

    def forward(self, x, initialize=True):
        x = x.transpose(1, 2)
        quantized, codes, metrics = self._codebook(x, initialize=initialize)
        if self.training:
            quantized = x + (quantized - x).detach()
            loss = F.mse_loss(x, quantized.detach())
        else:
            loss = torch.zeros([1], device=x.device)[0]
        return _VQForwardResult(self.project_out(quantized).transpose(1, 2), codes, loss, metrics)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, *, num_quantizers, codebook_offset, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(**kwargs) for _ in range(num_quantizers)])
        self.codebook_offset = codebook_offset

    def forward(self, x, n_q=None):
        residual, out, losses, codes = x, 0.0, [], []
        previous_initialized = True
        for layer in self.layers[: n_q or len(self.layers)]:
            was_initialized = layer.initialized
            quantized, c, loss, _ = layer(residual, initialize=previous_initialized)
            if self.training:
                previous_initialized = was_initialized
            quantized = quantized.detach()
            residual = residual - quantized
            out = out + quantized
            codes.append(c)
            losses.append(loss)
        if self.training:
            out = x + (out - x).detach()
        return _VQForwardResult(out, torch.stack(codes), torch.stack(losses), {})


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dimension=128, input_dimension=None, output_dimension=None, n_q=8, q_dropout=False,
                 no_quantization_rate=0.0, bins=1024, decay=0.99, threshold_usage_ratio=0.1,
                 replaced_usage_ratio=1.0, codebook_offset=0, force_projection=False):
        super().__init__()
        self.n_q, self.bins, self.dimension = n_q, bins, dimension
        self.q_dropout, self.rng_dropout = q_dropout, random.Random(1234)  # moshi's own per-instance RNG
        self.input_dimension = input_dimension or dimension
        self.output_dimension = output_dimension or dimension
        project = force_projection or self.input_dimension != dimension
        self.input_proj = nn.Conv1d(self.input_dimension, dimension, 1, bias=False) if project else nn.Identity()
        project = force_projection or self.output_dimension != dimension
        self.output_proj = nn.Conv1d(dimension, self.output_dimension, 1, bias=False) if project else nn.Identity()
        self.vq = ResidualVectorQuantization(dim=dimension, codebook_size=bins, num_quantizers=n_q, decay=decay,
                                             threshold_usage_ratio=threshold_usage_ratio,
                                             replaced_usage_ratio=replaced_usage_ratio, codebook_offset=codebook_offset)

    def forward(self, x, frame_rate):
        n_q = self.n_q
        x = self.input_proj(x)
        if self.training and self.q_dropout:
            n_q = self.rng_dropout.randint(1, self.n_q)
        quantized, codes, commit, metrics = self.vq(x, n_q=n_q)
        bw = torch.tensor(n_q * math.log2(self.bins) * frame_rate / 1000).to(x)
        return QuantizedResult(self.output_proj(quantized), codes.transpose(0, 1), bw, penalty=commit.mean(),
                               metrics=metrics)


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, *, n_q=8, n_q_semantic=1, **kwargs):
        super().__init__()
        self.max_n_q, self.n_q_semantic, self.n_q_acoustic = n_q, n_q_semantic, n_q - n_q_semantic
        q_dropout = kwargs.pop("q_dropout", False)  # moshi drops acoustic stages only
        self.rvq_first = ResidualVectorQuantizer(n_q=n_q_semantic, force_projection=True, **kwargs)
        self.rvq_rest = ResidualVectorQuantizer(n_q=n_q - n_q_semantic, codebook_offset=1, force_projection=True,
                                                q_dropout=q_dropout, **kwargs)

    def forward(self, x, frame_rate):
        first, rest = self.rvq_first(x, frame_rate), self.rvq_rest(x, frame_rate)
        n_first, n_rest = first.codes.shape[1], rest.codes.shape[1]  # the stages used, after dropout
        n = n_first + n_rest
        penalty = first.penalty * n_first / n + rest.penalty * n_rest / n
        return QuantizedResult(first.x + rest.x, torch.cat([first.codes, rest.codes], 1),
                               first.bandwidth + rest.bandwidth, penalty=penalty, metrics={})


class MimiLike(nn.Module):
    """Conv1d encoder -> ``SplitResidualVectorQuantizer`` (1 semantic + 2 acoustic stages) -> Conv1d decoder."""

    def __init__(self, q_dropout=False):
        super().__init__()
        self.encoder = nn.Conv1d(4, 16, 3, padding=1)
        self.quantizer = SplitResidualVectorQuantizer(n_q=3, n_q_semantic=1, dimension=D, input_dimension=16,
                                                      output_dimension=16, bins=K, q_dropout=q_dropout)
        self.decoder = nn.Conv1d(16, 4, 3, padding=1)

    def forward(self, x):
        res = self.quantizer(self.encoder(x), 50)
        return self.decoder(res.x), res


def _moshi_case():
    def build():
        torch.manual_seed(0)
        return MimiLike().train()

    def loss(m, x):
        rec, res = m(x)
        return (rec - x).pow(2).mean() + res.penalty

    def inner(m):
        return getattr(m.quantizer, "wrapped", m.quantizer)

    def latents(m, x):  # the semantic stack's input: what its first stage looks up
        z = inner(m).rvq_first.input_proj(m.encoder(x))
        return z.transpose(1, 2).reshape(-1, z.shape[1])

    def codebook(m):
        book = inner(m).rvq_first.vq.layers[0]._codebook
        return book.embedding_sum / book.cluster_usage.clamp(min=book.epsilon)[:, None]

    stages = {"rvq_first.vq.layers.0": (K, D), "rvq_rest.vq.layers.0": (K, D), "rvq_rest.vq.layers.1": (K, D)}
    return Case(build=build, data=lambda s: blobs(s, (8, 4, 32)), loss=loss, output=lambda m, x: m(x),
                codebooks=stages, usage_stored=set(stages), quantizer="quantizer", latents=latents,
                codebook=codebook, lr=3e-3)


def test_moshi_lookalike_analyze_finds_every_stage(tmp_path):
    """Both halves of the split quantizer, K and D from ``embedding_sum``, usage from the EMA'd ``cluster_usage``."""
    res = check_trained_state_dict(_moshi_case(), tmp_path, steps=6)
    assert {e.found.family for e in res.entries} == {"moshi"}


def test_moshi_lookalike_watch_finds_semantic_and_acoustic_stages(tmp_path):
    """Forward hooks on every stage of both residual stacks, with the stage inputs as latents; reading the
    codebook never registers moshi's ``_embedding`` cache."""
    recs = check_watch(_moshi_case(), tmp_path, steps=6)
    assert {r["family"] for r in recs} == {"moshi.rvq"}
    model = _moshi_case().build()
    monitor = shrinkscope.watch(model, every=0)
    assert sorted(monitor.names()) == sorted(f"quantizer/{s}" for s in _moshi_case().codebooks), monitor.names()
    model(blobs(0, (8, 4, 32)))  # a training forward ends with moshi's cache cleared
    assert monitor.report()
    assert all(m._codebook._embedding is None for m in model.quantizer.modules() if hasattr(m, "_codebook"))
    monitor.remove()


def test_moshi_lookalike_defer_fits():
    """The split quantizer deferred as a whole: moshi's own unquantized output (``output_proj(input_proj(x))``,
    both stacks summed) in its ``QuantizedResult``; after the switch the semantic stage fits held-out latents no
    worse than moshi's own k-means on the first batch of an untrained encoder."""
    check_defer(_moshi_case(), warmup=20, after=20, reservoir=256)


def test_moshi_lookalike_defer_writes_what_moshis_init_writes():
    case = _moshi_case()
    model = case.build()
    dq = shrinkscope.defer(model.quantizer, switch=4, reservoir_size=256)
    model.quantizer = dq
    x = case.data(0)
    res = dq(model.encoder(x), 50)
    q = dq.wrapped
    want = q.rvq_first.output_proj(q.rvq_first.input_proj(model.encoder(x))) + \
        q.rvq_rest.output_proj(q.rvq_rest.input_proj(model.encoder(x)))
    assert torch.allclose(res.x, want, atol=1e-6) and bool((res.codes == -1).all()) and res.codes.shape[1] == 3
    train(case, model, 4, start=1)
    assert dq.switched
    for stage in [*q.rvq_first.vq.layers, *q.rvq_rest.vq.layers]:
        book = stage._codebook
        assert book.initialized and bool((book.cluster_usage > 0).all())
    analyzed = shrinkscope.analyze(model)  # a live model: read through the wrapper, the user's names
    assert len(analyzed.entries) == 3


def test_moshi_lookalike_stages_refuse_defer_with_the_reason():
    model = _moshi_case().build()
    for q in (model.quantizer.rvq_rest.vq, model.quantizer.rvq_rest.vq.layers[1]):
        with pytest.raises(TypeError, match="moshi") as err:
            shrinkscope.defer(q, switch=5)
        assert "ResidualVectorQuantizer" in str(err.value), str(err.value)


def test_moshi_lookalike_deferred_checkpoints(tmp_path):
    """A deferred moshi quantizer's state dict reads under the user's names: during the warm-up every stage is
    "uninitialized" with no usage claimed (``cluster_usage`` still holds its all-ones fill); after the switch and
    training, usage comes from the EMA'd ``cluster_usage``."""
    case = _moshi_case()
    model = case.build()
    model.quantizer = shrinkscope.defer(model.quantizer, switch=5, reservoir_size=256)
    train(case, model, 3)
    torch.save(model.state_dict(), tmp_path / "warm.pt")
    train(case, model, 6, start=3)
    torch.save(model.state_dict(), tmp_path / "done.pt")
    names = sorted(f"quantizer.{s}" for s in case.codebooks)
    warm = shrinkscope.analyze(str(tmp_path / "warm.pt")).entries
    assert sorted(e.health.name for e in warm) == names
    assert all(e.found.counts is None and e.health.verdict.status == "uninitialized" for e in warm)
    done = shrinkscope.analyze(str(tmp_path / "done.pt")).entries
    assert sorted(e.health.name for e in done) == names
    assert all(e.found.usage_source == "cluster_usage" for e in done)


def test_moshi_lookalike_deferred_passthrough_draws_quantizer_dropout():
    """With ``q_dropout`` the pass-through draws the number of acoustic stages from moshi's own
    ``rng_dropout``, as its forward does: each step returns codes and bandwidth for the drawn stages, and the
    RNG stays in step with an undeferred model's, so the draws after the switch are the ones it would make."""
    torch.manual_seed(0)
    base = MimiLike(q_dropout=True).train()
    model = MimiLike(q_dropout=True).train()
    model.load_state_dict(base.state_dict())
    dq = shrinkscope.defer(model.quantizer, switch=50, reservoir_size=256)
    drawn = set()
    for s in range(12):
        x = blobs(s, (8, 4, 32))
        with torch.no_grad():
            got, want = dq(model.encoder(x), 50), base.quantizer(base.encoder(x), 50)
        assert got.codes.shape == want.codes.shape and torch.equal(got.bandwidth, want.bandwidth)
        drawn.add(got.codes.shape[1])
    assert drawn == {2, 3}, drawn  # 1 semantic stage + 1 or 2 acoustic ones
    assert dq.wrapped.rvq_rest.rng_dropout.getstate() == base.quantizer.rvq_rest.rng_dropout.getstate()
    model.eval()
    with torch.no_grad():  # eval: no draw, every stage
        assert dq(model.encoder(x), 50).codes.shape[1] == 3
