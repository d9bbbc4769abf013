"""Audio codecs, the installed packages: ``encodec`` (facebookresearch), transformers' EncodecModel, MimiModel
and DacModel built from configs, and ``snac``.

The ``encodec`` package's top level imports torchaudio, whose PyPI wheels do not load next to torch 2.13
(CPU); its ``encodec.quantization`` subpackage needs only torch and einops, so it is imported here without
running the top-level ``__init__`` (the package object is created from its spec, not executed).
"""
import copy
import dataclasses
import importlib.util
import io
import json
import sys

import pytest
import torch
from realkit import (
    Case,
    blobs,
    check_analyze,
    check_defer,
    check_trained_state_dict,
    check_watch,
    held_out_fit,
    train,
)
from torch import nn

import shrinkscope
from shrinkscope.kmeans import kmeans

pytest.importorskip("einops")


def _encodec_quantization():
    if importlib.util.find_spec("encodec") is None:
        pytest.skip("encodec is not installed")
    if "encodec" not in sys.modules:
        spec = importlib.util.find_spec("encodec")
        sys.modules["encodec"] = importlib.util.module_from_spec(spec)  # the package, __init__ not run
    import encodec.quantization as q
    from encodec.quantization import core_vq
    return q, core_vq


D, K = 8, 32


class ConvAE(nn.Module):
    """Conv1d encoder -> quantizer on (B, D, T) -> Conv1d decoder; forward returns the quantizer's output too."""

    def __init__(self, quantizer: nn.Module, *, channels: int = 4, **call):
        super().__init__()
        self.call = call  # extra forward arguments of the quantizer (EnCodec's RVQ takes sample_rate)
        self.enc = nn.Conv1d(channels, D, 3, padding=1)
        self.quantizer = quantizer
        self.dec = nn.Conv1d(D, channels, 3, padding=1)

    def forward(self, x):
        out = self.quantizer(self.enc(x), **self.call)
        q = out.quantized if hasattr(out, "quantized") else out[0]
        return self.dec(q), out


def _out_loss(out):
    if hasattr(out, "penalty"):
        return out.penalty.sum() if out.penalty is not None else 0.0
    return sum(t.sum() for t in out[2:] if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() == 1) \
        if isinstance(out, tuple) and len(out) > 2 else out[2].sum()


def _loss(m, x):
    rec, out = m(x)
    return (rec - x).pow(2).mean() + _out_loss(out)


def _ae_case(make, codebooks, usage, *, latents=None, codebook=None, quantizer="quantizer", **call) -> Case:
    def build():
        torch.manual_seed(0)
        return ConvAE(make(), **call)
    return Case(build=build, data=lambda s: blobs(s, (8, 4, 64)), loss=_loss, output=lambda m, x: m(x),
                codebooks=codebooks, usage_stored=usage, quantizer=quantizer, latents=latents, codebook=codebook,
                lr=3e-3)


def _encodec_cases():
    q, core_vq = _encodec_quantization()

    def lat(m, x):
        vq = getattr(m.quantizer, "wrapped", m.quantizer)
        return vq.project_in(m.enc(x).movedim(1, -1)).reshape(-1, D)

    def cb(m):
        return getattr(m.quantizer, "wrapped", m.quantizer)._codebook.embed.detach()

    return {
        "vq": _ae_case(lambda: core_vq.VectorQuantization(dim=D, codebook_size=K, kmeans_iters=5),
                       {"quantizer": (K, D)}, {"quantizer"}, latents=lat, codebook=cb),
        "rvq": _ae_case(lambda: q.ResidualVectorQuantizer(dimension=D, n_q=3, bins=K, kmeans_iters=5),
                        {"layers.0": (K, D), "layers.1": (K, D), "layers.2": (K, D)},
                        {"layers.0", "layers.1", "layers.2"}, sample_rate=64,
                        latents=lambda m, x: m.enc(x).movedim(1, -1).reshape(-1, D),  # stage 0: no projection
                        codebook=lambda m: getattr(m.quantizer, "wrapped", m.quantizer).vq.layers[0]._codebook.embed),
    }


@pytest.mark.parametrize("name", ["vq", "rvq"])
def test_encodec_analyze(name, tmp_path):
    check_trained_state_dict(_encodec_cases()[name], tmp_path)


@pytest.mark.parametrize("name", ["vq", "rvq"])
def test_encodec_watch(name, tmp_path):
    check_watch(_encodec_cases()[name], tmp_path)


def test_encodec_defer_vq_fits():
    check_defer(_encodec_cases()["vq"], warmup=30, after=30, reservoir=256)


def test_encodec_defer_residual_stack_fits_stage_wise():
    """The whole ``ResidualVectorQuantizer``: its ``QuantizedResult`` with the input passed through before the
    switch; at the switch every stage is fitted on the residual of the stages before it and marked inited."""
    case = _encodec_cases()["rvq"]
    check_defer(case, warmup=30, after=30, reservoir=256)
    model = case.build()
    dq = shrinkscope.defer(model.quantizer, switch=5, reservoir_size=256)
    model.quantizer = dq
    train(case, model, 5)
    res = dq.reservoir().clone()
    dq.switch_now()
    stages = dq.wrapped.vq.layers
    assert all(bool(s._codebook.inited) for s in stages)
    c0 = kmeans(res, K, iters=20, seed=0)
    assert torch.allclose(stages[0]._codebook.embed, c0, atol=1e-5)


def _drifting_encodec_case(scale: float, *, latent_penalty: float = 0.0) -> Case:
    """EnCodec ``VectorQuantization`` behind an encoder whose output scale drifts during the warm-up: its
    weights start ``scale`` times the default, Adam runs at a high learning rate, and an optional L2 penalty
    on the encoder output (``latent_penalty``) pulls a large start down. ``scale < 1``: the latents grow
    ~4000x and settle; ``scale > 1`` with the penalty: they shrink ~50x, the issue's condition."""
    case = _encodec_cases()["vq"]

    def build():
        model = case.build()
        with torch.no_grad():
            model.enc.weight.mul_(scale), model.enc.bias.mul_(scale)
        return model

    def loss(m, x):
        return _loss(m, x) + (latent_penalty * m.enc(x).pow(2).mean() if latent_penalty else 0.0)

    return dataclasses.replace(case, build=build, loss=loss, lr=3e-2 if latent_penalty == 0 else 5e-2)


def _latent_var(case: Case, model: nn.Module) -> float:
    with torch.no_grad():
        return float(case.latents(model, case.data(-1)).var(0).sum())


def _switched(case: Case, warmup: int, **defer_options) -> tuple[nn.Module, float]:
    """``(model, reservoir variance)`` right after a switch at ``warmup`` (no quantized step yet)."""
    model = case.build()
    model.quantizer = shrinkscope.defer(model.quantizer, switch=warmup, reservoir_size=256, **defer_options)
    torch.manual_seed(2)
    train(case, model, warmup)
    held = float(model.quantizer.reservoir().var(0).sum())
    model.quantizer.switch_now()
    return model, held


def test_encodec_defer_reservoir_holds_the_encoder_of_the_switch():
    """The issue's failure: latents shrinking ~50x during a fixed warm-up. A reservoir spread over the whole
    warm-up (the old default with ``switch < check_every``) holds latents ~10x wider than the encoder's at the
    switch, and k-means on it leaves most codes where the encoder no longer goes; the default window does not."""
    case, warmup = _drifting_encodec_case(10.0, latent_penalty=1.0), 60
    start = _latent_var(case, case.build())
    recent, held = _switched(case, warmup)
    whole, held_whole = _switched(case, warmup, recent_steps=warmup)
    now = _latent_var(case, recent)
    assert start > 20 * now, (start, now)  # the drift is real
    assert held < 2.5 * now < held_whole / 4, (held, now, held_whole)
    qe, used = held_out_fit(case, recent)
    qe_whole, used_whole = held_out_fit(case, whole)
    assert qe < 0.8 * qe_whole and used > 2 * used_whole, (qe, used, qe_whole, used_whole)


def test_encodec_defer_fits_an_encoder_that_drifted_during_warmup():
    """Latents growing ~4000x in the warm-up, then settling: after the switch and 20 quantized steps the
    deferred codebook fits held-out latents better than a quantizer trained from step 0 (whose k-means
    ran on the first, tiny batch)."""
    case = _drifting_encodec_case(0.02)
    start = _latent_var(case, case.build())
    out = check_defer(case, warmup=40, after=20, reservoir=256, slack=1.0)
    assert out["deferred_qe"] < 0.8 * out["baseline_qe"], out
    assert start * 100 < _latent_var(case, train(case, case.build(), 40)), "no drift"


def test_encodec_defer_one_stage_of_a_residual_stack_is_refused_or_warned(caplog):
    """Deferring ``layers.1`` alone would leave later stages a residual of the pass-through."""
    q, _ = _encodec_quantization()
    rvq = q.ResidualVectorQuantizer(dimension=D, n_q=3, bins=K)
    with caplog.at_level("WARNING", logger="shrinkscope"):
        try:
            shrinkscope.defer(rvq.vq.layers[1], switch=5)
        except (TypeError, ValueError) as e:
            assert "residual" in str(e).lower()
            return
    assert any("residual" in r.getMessage().lower() for r in caplog.records), "no warning"


# ---- transformers -------------------------------------------------------------------------------------


def _hf():
    return pytest.importorskip("transformers")


def _hf_case(kind: str) -> Case:
    tr = _hf()
    if kind == "encodec":
        cfg = tr.EncodecConfig(hidden_size=16, num_filters=4, codebook_size=K, codebook_dim=16,
                               upsampling_ratios=[4, 2], num_lstm_layers=1, target_bandwidths=[1.5, 3.0],
                               sampling_rate=800)
        n = 6  # target bandwidth 3 kbps at 100 frames/s and log2(K) = 5 bits per code
        # transformers' Encodec has no EMA update: cluster_size keeps its zero fill, no evidence of usage
        cls, cbs, usage = tr.EncodecModel, {f"layers.{i}": (K, 16) for i in range(n)}, set()
    elif kind == "encodec1":
        cfg = tr.EncodecConfig(hidden_size=16, num_filters=4, codebook_size=K, codebook_dim=16,
                               upsampling_ratios=[4, 2], num_lstm_layers=1, target_bandwidths=[0.5],
                               sampling_rate=800)
        cls, cbs, usage = tr.EncodecModel, {"layers.0": (K, 16)}, set()
    elif kind == "mimi":
        cfg = tr.MimiConfig(hidden_size=32, num_filters=8, codebook_size=K, codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=3,
                            num_semantic_quantizers=1, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=2, intermediate_size=32, head_dim=16, upsampling_ratios=[4, 2],
                            sliding_window=16, sampling_rate=800, frame_rate=50, upsample_groups=32)
        cls = tr.MimiModel
        cbs = {"semantic_residual_vector_quantizer.layers.0": (K, 16),
               **{f"acoustic_residual_vector_quantizer.layers.{i}": (K, 16) for i in range(2)}}
        usage = set()  # HF Mimi never updates cluster_usage: its all-ones start is no evidence of use
    else:
        cfg = tr.DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=32,
                           n_codebooks=3, codebook_size=K, codebook_dim=4, hidden_size=16)
        cls, cbs, usage = tr.DacModel, {f"quantizers.{i}": (K, 4) for i in range(3)}, set()

    def build():
        torch.manual_seed(0)
        return cls(cfg).train()

    def loss(m, x):
        out = m(x)
        rec = out.audio_values[..., : x.shape[-1]]
        extra = out.loss.mean() if getattr(out, "loss", None) is not None else 0.0
        return (rec - x).pow(2).mean() + extra

    return Case(build=build, data=lambda s: 0.1 * blobs(s, (2, 1, 256), centers=8), loss=loss,
                output=lambda m, x: m(x), codebooks=cbs, usage_stored=usage, quantizer="quantizer", lr=1e-3)


@pytest.mark.parametrize("kind", ["encodec", "encodec1", "mimi", "dac"])
def test_hf_analyze_save_pretrained(kind, tmp_path):
    case = _hf_case(kind)
    model = train(case, case.build(), 2)
    model.save_pretrained(tmp_path / "folder")
    check_analyze(case, str(tmp_path / "folder" / "model.safetensors"))


def test_hf_analyze_folder_names_the_file(tmp_path):
    """``analyze FOLDER`` on a save_pretrained folder reads its model.safetensors or names it."""
    case = _hf_case("dac")
    case.build().save_pretrained(tmp_path / "folder")
    try:
        res = shrinkscope.analyze(str(tmp_path / "folder"))
    except ValueError as e:
        assert "model.safetensors" in str(e) and "model.pt" not in str(e), str(e)
    else:
        assert len(res.entries) == 3


@pytest.mark.parametrize("kind", ["dac"])
def test_hf_watch(kind, tmp_path):
    check_watch(_hf_case(kind), tmp_path)


def _filled(case: Case, used: int | None = None) -> Case:
    """``case`` with its transformers Encodec/Mimi codebooks filled at random (a random init leaves them all
    zero: no geometry to measure) and, for EnCodec, only the ``used`` stages the default bandwidth runs."""
    def build():
        model = case.build()
        torch.manual_seed(2)
        with torch.no_grad():
            for mod in model.modules():
                for buf in ("embed_sum", "embed"):
                    if isinstance(mod._buffers.get(buf), torch.Tensor):
                        mod._buffers[buf].normal_(0, 0.1)
                        break
        return model
    cbs = case.codebooks if used is None else {f"layers.{i}": case.codebooks[f"layers.{i}"] for i in range(used)}
    return dataclasses.replace(case, build=build, codebooks=cbs)


@pytest.mark.parametrize("kind,used", [("encodec", 3), ("encodec1", 1), ("mimi", None)])
def test_hf_watch_encode_only_models(kind, used, tmp_path):
    """transformers' Encodec and Mimi quantize through ``.encode()`` methods, never a module ``forward``:
    watch wraps those per instance, trains bitwise identically and writes records with latents."""
    check_watch(_filled(_hf_case(kind), used), tmp_path)


@pytest.mark.parametrize("kind", ["encodec", "mimi"])
def test_hf_watch_model_encode_copies_and_removal(kind, tmp_path):
    """``model.encode(x)`` is collected and returns the same codes; deep copies and ``torch.save`` copies run
    the library's plain method and feed nothing; ``remove()`` takes the wrapper off every instance."""
    case = _filled(_hf_case(kind))
    plain, model = case.build(), case.build()
    x = case.data(0)
    monitor = shrinkscope.watch(model, every=0, log_to=tmp_path / "w.jsonl")
    assert torch.equal(model.encode(x).audio_codes, plain.encode(x).audio_codes)
    assert monitor.step == 1 and all(monitor.counts(n).sum() > 0 for n in monitor.names()[:1])
    twin = copy.deepcopy(model)
    assert torch.equal(twin.encode(x).audio_codes, plain.encode(x).audio_codes)
    buf = io.BytesIO()
    torch.save(model.quantizer, buf)  # the whole model has weight-norm parametrizations torch.save refuses
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    emb = torch.randn(2, model.config.hidden_size, 5)
    assert torch.equal(loaded.encode(emb), plain.quantizer.encode(emb))
    assert monitor.step == 1
    monitor.report()
    monitor.remove()
    assert not [m for m in model.modules() if "encode" in m.__dict__], "watch left a wrapper behind"
    recs = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert any(r.get("metrics", {}).get("spread_ratio") for r in recs), recs


@pytest.mark.parametrize("kind", ["encodec", "mimi"])
def test_hf_watch_shallow_copy_runs_unwatched(kind, tmp_path):
    """``copy.copy`` of a wrapped stage or quantizer gets the class's plain ``encode`` bound to itself and
    returns the library's codes. A stage's copy feeds the monitor nothing. A quantizer's copy does not count a
    step, but it shares its stage modules with the original (that is what a shallow copy is), so calling
    them collects, exactly as forward hooks on shared submodules would."""
    case = _filled(_hf_case(kind))
    plain, model = case.build(), case.build()
    monitor = shrinkscope.watch(model, every=0)
    emb = torch.randn(2, model.config.hidden_size, 5)

    def stage(m):
        return m.quantizer.layers[0] if kind == "encodec" else m.quantizer.semantic_residual_vector_quantizer.layers[0]

    def counts():
        return {n: monitor.counts(n).sum().item() for n in monitor.names()}

    twin = copy.copy(stage(model))
    assert "encode" not in twin.__dict__ and twin.encode.__self__ is twin
    x = torch.randn(2, 16, 5)
    assert torch.equal(twin.encode(x), stage(plain).encode(x))
    assert counts() == dict.fromkeys(monitor.names(), 0) and monitor.step == 0, "a shallow copy was counted"
    outer = copy.copy(model.quantizer)
    assert "encode" not in outer.__dict__ and outer.encode.__self__ is outer
    assert torch.equal(outer.encode(emb), plain.quantizer.encode(emb))
    assert monitor.step == 0, "the copy's own call counted a step"
    assert all(outer._modules[k] is model.quantizer._modules[k] for k in outer._modules)  # shared stages
    before = counts()
    model.quantizer.encode(emb)  # the original is still watched
    assert monitor.step == 1 and counts()[monitor.names()[0]] > before[monitor.names()[0]]
    monitor.remove()
    assert not [m for m in model.modules() if "encode" in m.__dict__ or "__getstate__" in m.__dict__]


def test_hf_watch_data_parallel_replicas_run_their_own_encode():
    """``nn.DataParallel`` builds replicas from a shallow copy of ``__dict__``: each replica's ``encode`` is
    the class method bound to the replica, so it runs on the replica's own weights (its device, under
    DataParallel), unwatched; the original stays watched and ``remove()`` leaves nothing on it."""

    def replicate(root):
        """What ``torch.nn.parallel.replicate`` does for one device (it refuses CPU devices): every module's
        ``_replicate_for_data_parallel()``, children re-linked, parameters and buffers copied."""
        copies = {m: m._replicate_for_data_parallel() for m in root.modules()}
        for m, r in copies.items():
            for key, child in m._modules.items():
                r._modules[key] = None if child is None else copies[child]
            for key, t in m._parameters.items():
                r._parameters[key] = None if t is None else t.detach().clone()
            for key, t in m._buffers.items():
                r._buffers[key] = None if t is None else t.clone()
        return copies[root]

    case = _filled(_hf_case("encodec"))
    plain, model = case.build(), case.build()
    monitor = shrinkscope.watch(model, every=0)
    replica = replicate(model.quantizer)
    for r, m in zip(replica.modules(), model.quantizer.modules()):
        assert "encode" not in r.__dict__ and "_replicate_for_data_parallel" not in r.__dict__
        if "encode" in m.__dict__:
            assert r.encode.__self__ is r
    with torch.no_grad():
        replica.layers[0].codebook.embed.mul_(-1)  # the replica's own weights now differ from the original's
    emb = torch.randn(2, model.config.hidden_size, 5)
    assert not torch.equal(replica.encode(emb), model.quantizer.encode(emb))
    plain.quantizer.layers[0].codebook.embed.mul_(-1)
    assert torch.equal(replica.encode(emb), plain.quantizer.encode(emb))
    assert monitor.step == 1, "only the original's call counts"
    monitor.remove()
    assert not [m for m in model.modules() if {"encode", "__getstate__", "_replicate_for_data_parallel"} & set(m.__dict__)]


@pytest.mark.parametrize("kind", ["encodec", "mimi"])
def test_hf_encode_only_codecs_refuse_defer_with_the_reason(kind):
    """No straight-through path and no codebook update in transformers' Encodec/Mimi: nothing to warm up."""
    model = _hf_case(kind).build()
    with pytest.raises(TypeError, match="no gradient through the quantizer"):
        shrinkscope.defer(model.quantizer, switch=5)


def _dac_defer_case() -> Case:
    def wrapped(m):
        return getattr(m.quantizer, "wrapped", m.quantizer)

    def latents(m, x):  # stage 0's l2-normalised in_proj output: what its lookup compares
        z_e = wrapped(m).quantizers[0].in_proj(m.encoder(x))
        return nn.functional.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]), dim=-1)

    def codebook(m):
        return nn.functional.normalize(wrapped(m).quantizers[0].codebook.weight.detach(), dim=-1)

    return dataclasses.replace(_hf_case("dac"), latents=latents, codebook=codebook)


def _dac_rvq_ae_case() -> Case:
    """transformers' ``DacResidualVectorQuantizer`` between plain Conv1d layers. Inside a tiny random DacModel
    the encoder's output is nearly constant (its weights start at std 0.02), which leaves nothing to fit."""
    tr = _hf()
    cfg = tr.DacConfig(hidden_size=D, n_codebooks=3, codebook_size=K, codebook_dim=4)

    def loss(m, x):
        rec, out = m(x)
        return (rec - x).pow(2).mean() + 0.25 * out[3].mean() + out[4].mean()

    def wrapped(m):
        return getattr(m.quantizer, "wrapped", m.quantizer)

    def latents(m, x):
        z_e = wrapped(m).quantizers[0].in_proj(m.enc(x))
        return nn.functional.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]), dim=-1)

    def codebook(m):
        return nn.functional.normalize(wrapped(m).quantizers[0].codebook.weight.detach(), dim=-1)

    case = _ae_case(lambda: tr.models.dac.modeling_dac.DacResidualVectorQuantizer(cfg),
                    {f"quantizers.{i}": (K, 4) for i in range(3)}, set(), latents=latents, codebook=codebook)
    return dataclasses.replace(case, loss=loss)


def test_hf_dac_defer_fits():
    """transformers' DacResidualVectorQuantizer: pass-through in its 5-tuple, stage-wise fit after the switch."""
    out = check_defer(_dac_rvq_ae_case(), warmup=20, after=20, reservoir=256)
    assert out["deferred_used"] >= out["baseline_used"], out


def test_hf_dac_defer_passthrough_inside_dac_model():
    """Inside DacModel: the pass-through returns the library's 5-tuple (shapes and dtypes as its own call),
    stage outputs ``out_proj(in_proj(residual))`` with gradients, zero losses, and DacModel's loss still works."""
    case = _dac_defer_case()
    model, plain = case.build(), case.build()
    dq = shrinkscope.defer(model.quantizer, switch=6, reservoir_size=256)
    model.quantizer = dq
    z = model.encoder(case.data(0))
    torch.manual_seed(5)
    got = dq(z)
    after_passthrough = torch.get_rng_state()
    torch.manual_seed(5)
    want = plain.quantizer(z)
    assert torch.equal(after_passthrough, torch.get_rng_state()), "quantizer dropout drew differently"
    assert [(t.dtype, t.shape) for t in got] == [(t.dtype, t.shape) for t in want]
    q, _codes, lat, commit, book = got
    stage0 = dq.wrapped.quantizers[0]
    assert torch.allclose(lat[:, :4], stage0.in_proj(z), atol=1e-6)
    assert float(commit.detach().abs().sum()) == 0 == float(book.detach().abs().sum()) and q.requires_grad
    out = model(case.data(1))
    assert out.loss is not None and torch.isfinite(out.loss).all() and dq.step == 2


def test_hf_dac_defer_switch_scales_rows_to_the_latents():
    """DAC looks codes up l2-normalised but decodes the raw row: at the switch each row is a unit centroid
    times the mean length of its latents, so the decoded row is close to the stage's pass-through value."""
    case = _dac_rvq_ae_case()
    model = case.build()
    rvq = model.quantizer
    dq = shrinkscope.defer(rvq, switch=10, reservoir_size=256)
    model.quantizer = dq
    train(case, model, 11)
    assert dq.switched
    rows = rvq.quantizers[0].codebook.weight.detach()
    with torch.no_grad():
        z_e = rvq.quantizers[0].in_proj(model.enc(case.data(-1))).transpose(1, 2).reshape(-1, rows.shape[1])
    ids = (nn.functional.normalize(z_e, dim=-1) @ nn.functional.normalize(rows, dim=-1).t()).argmax(1)
    assert float((rows[ids] - z_e).pow(2).sum(1).mean() / z_e.pow(2).sum(1).mean()) < 0.25
    unit = (nn.functional.normalize(rows, dim=-1)[ids] - z_e).pow(2).sum(1).mean() / z_e.pow(2).sum(1).mean()
    assert float(unit) > float((rows[ids] - z_e).pow(2).sum(1).mean() / z_e.pow(2).sum(1).mean())


def test_snac_defer_refused_with_the_reason():
    model = _snac_case().build()
    with pytest.raises(TypeError, match="stride"):
        shrinkscope.defer(model.quantizer, switch=5)


# ---- snac ---------------------------------------------------------------------------------------------


def _snac_case() -> Case:
    snac = pytest.importorskip("snac")

    def build():
        torch.manual_seed(0)
        return snac.SNAC(sampling_rate=800, encoder_dim=8, encoder_rates=[2, 2], decoder_dim=16,
                         decoder_rates=[2, 2], attn_window_size=None, codebook_size=K, codebook_dim=4,
                         vq_strides=[2, 1], noise=False).train()

    def loss(m, x):
        rec, _codes = m(x)
        return (rec[..., : x.shape[-1]] - x).pow(2).mean()

    return Case(build=build, data=lambda s: 0.1 * blobs(s, (2, 1, 128), centers=8), loss=loss,
                output=lambda m, x: m(x), codebooks={f"quantizers.{i}": (K, 4) for i in range(2)},
                usage_stored=set(), quantizer="quantizer", lr=1e-3)


def test_snac_analyze(tmp_path):
    check_trained_state_dict(_snac_case(), tmp_path, steps=2)


def test_snac_watch(tmp_path):
    check_watch(_snac_case(), tmp_path)


def test_hf_watch_encode_never_raises_and_works_under_inference_mode(monkeypatch, caplog):
    """A failing extract disables the codebook with one warning; inference-mode calls are collected."""
    from shrinkscope.families.audio import HfCodecVQ

    case = _filled(_hf_case("mimi"))
    plain, model = case.build().eval(), case.build().eval()
    x = case.data(0)
    monitor = shrinkscope.watch(model, every=0, collect="all")
    with torch.inference_mode():
        assert torch.equal(model.encode(x).audio_codes, plain.encode(x).audio_codes)
    assert all(monitor.counts(n).sum() > 0 for n in monitor.names())
    assert monitor.report() and not monitor.disabled

    def broken(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(HfCodecVQ, "extract", broken)
    # inference mode again: Mimi caches its codebook as an inference tensor that autograd then refuses
    with caplog.at_level("WARNING", logger="shrinkscope"), torch.inference_mode():
        assert torch.equal(model.encode(x).audio_codes, plain.encode(x).audio_codes)
    assert monitor.disabled and any("boom" in r.getMessage() for r in caplog.records)
    monitor.remove()


def test_hf_dac_deferred_model_still_decodes_codes():
    """``DacModel.decode(audio_codes=...)`` calls ``quantizer.from_codes``: the wrapper hands methods it lacks to
    the wrapped quantizer, so a deferred model decodes codes, and after the switch exactly as the bare one."""
    case = _dac_defer_case()
    model = case.build()
    model.quantizer = shrinkscope.defer(model.quantizer, switch=2, reservoir_size=64)
    train(case, model, 3)
    assert model.quantizer.switched
    model.eval()
    with torch.no_grad():
        codes = model.encode(case.data(-1)).audio_codes
        got = model.decode(audio_codes=codes).audio_values
        want = shrinkscope.unwrap(model).decode(audio_codes=codes).audio_values
    assert torch.equal(got, want)
