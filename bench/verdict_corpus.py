"""The labelled corpus of bench/calibrate_verdicts.py: latent clouds, constructed codebooks, small real runs.

Every case is labelled by how it was built (synthetic) or by a downstream outcome (real runs), never by the
rules under test; calibrate_verdicts.py's docstring lists the constructions and docs/verdicts.md the protocol.
"""
from __future__ import annotations

import math

import torch

from shrinkscope.kmeans import kmeans

__all__ = ["LATENT_SETS", "label_by_outcome", "mixture", "named_cases", "reference_runs", "synthetic_cases",
           "vqp_runs"]


# ----------------------------------------------------------------------------------------------- latents
def mixture(n: int, d: int, *, modes: int = 10, sep: float = 2.5, decay: float = 0.0, sphere: bool = False,
            offset: float = 0.0, intrinsic: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, labels)``: balanced Gaussian mixture (per-dimension scale ``10^(-decay * i / d)``), optionally on
    the unit sphere, shifted ``offset`` from the origin, or drawn in ``intrinsic`` dimensions and embedded in d."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(1234 + d)
    m = intrinsic or d
    scale = torch.logspace(0, -decay, m)
    centres = torch.randn(modes, m, generator=fixed) * sep * scale
    lab = torch.arange(n) % modes
    x = centres[lab] + torch.randn(n, m, generator=g) * scale
    if intrinsic:
        basis = torch.linalg.qr(torch.randn(d, m, generator=fixed)).Q  # (d, m) orthonormal columns
        x = x @ basis.T + 0.01 * torch.randn(n, d, generator=g)
    if offset:
        direction = torch.randn(d, generator=fixed)
        x = x + offset * direction / direction.norm()
    if sphere:
        x = x / x.norm(dim=1, keepdim=True)
    return x, lab


LATENT_SETS = {  # name -> mixture options
    "mix16": {"d": 16},
    "mix64": {"d": 64, "decay": 1.0},
    "sphere32": {"d": 32, "sphere": True, "sep": 1.5},
    "offset16": {"d": 16, "offset": 20.0},  # far from the origin, like post-activation encoder outputs
    "lowdim64": {"d": 64, "intrinsic": 8},  # an 8-dimensional cloud in 64 dimensions
}


# --------------------------------------------------------------------------------------------- codebooks
def synthetic_cases(name: str, opts: dict, ks: list[int], n: int, seed: int):
    """Yield ``(case, codebook, latents, labels)`` for one latent cloud."""
    x, lab = mixture(n, seed=seed, **opts)
    xt, labt = mixture(n, seed=seed + 1, **opts)  # codebooks are fitted on another draw
    g = torch.Generator().manual_seed(seed + 7)
    mean = xt.mean(0)
    d = x.shape[1]
    sphere = opts.get("sphere", False)
    pcs = torch.linalg.svd(xt - mean, full_matrices=False).Vh

    def case(kind, k, truth, tags, **extra):
        return {"id": f"{name}/K{k}/{kind}", "family": kind.split("@")[0], "latents": name, "K": k, "D": d,
                "truth": truth, "tags": tags, **extra}

    shrink = ["shrinkage", "excess_distortion"]
    for k in ks:
        km = kmeans(xt, k, iters=20, seed=seed)
        yield case("kmeans", k, "healthy", ["optimal"]), km, x, lab
        if k >= 64:  # 16 random latents miss whole modes of a 10-mode mixture (1.9 on average): not a control
            yield case("sample", k, "healthy", []), xt[torch.randperm(n, generator=g)[:k]], x, lab
            noisy = xt[torch.randperm(n, generator=g)[:k]] + 0.1 * torch.randn(k, d, generator=g) * xt.std(0)
            yield case("sample_noise", k, "healthy", []), noisy, x, lab
        for f in (0.3, 0.5, 0.6, 0.7):
            yield case(f"pull@{f}", k, "shrunk", shrink, factor=f), mean + f * (km - mean), x, lab
        for m in (1, 3, 5):
            sub = xt[labt < m]
            if sub.shape[0] >= k:
                tags = ["mode_shrinkage", "poor_coverage", "excess_distortion"]
                yield case(f"modes@{m}", k, "shrunk", tags, modes=m), kmeans(sub, k, iters=20, seed=seed), x, lab
        for r in (1, 2):
            if r < min(k - 1, d) // 2:
                p = pcs[:r]
                tags = ["dimensional_collapse", "excess_distortion"]
                yield case(f"plane@{r}", k, "shrunk", tags, rank=r), mean + (km - mean) @ p.T @ p, x, lab
        if sphere:
            for s in (0.6, 1.13):  # cosine spread about s^2 / (1 + s^2): 0.26, 0.56
                cap = mean / mean.norm() + s * torch.randn(k, d, generator=g) / math.sqrt(d)
                yield case(f"cap@{s}", k, "shrunk", shrink, cap=s), cap / cap.norm(dim=1, keepdim=True), x, lab
        far = 20.0 * float(xt.std(0).norm())
        base = mean + far * torch.randn(d, generator=g) / math.sqrt(d)
        par = base + 0.002 * far * torch.randn(k, d, generator=g) / math.sqrt(d)
        yield case("parallel", k, "shrunk", shrink), par, x, lab
        for share in (0.2, 0.4):
            parked = km.clone()
            idx = torch.randperm(k, generator=g)[: max(1, int(share * k))]
            dirs = torch.randn(idx.numel(), d, generator=g)
            parked[idx] = mean + far * dirs / dirs.norm(dim=1, keepdim=True)
            tags = ["dead_codes"] + ["low_utilization"] * (share >= 0.4)
            yield case(f"parked@{share}", k, "underused", tags, share=share), parked, x, lab
        for live, tight in ((0.15, 0.05), (0.15, 0.25), (0.5, 0.05), (0.5, 0.25)):
            # the standard recipe's failure (Zhao et al. 2026): k-means on an untrained encoder's outputs puts
            # every code in the small region those outputs fill; as the encoder matures, the few codes that win
            # latents follow the data and the rest stay clumped where they started
            n_live = max(2, int(live * k))
            anchored = torch.empty(k, d)
            anchored[:n_live] = kmeans(xt, n_live, iters=20, seed=seed)
            centre = mean + 0.5 * (xt[int(torch.randint(0, n, (1,), generator=g))] - mean)
            anchored[n_live:] = centre + tight * (xt[torch.randperm(n, generator=g)[:k - n_live]] - mean)
            if sphere:
                anchored = anchored / anchored.norm(dim=1, keepdim=True)
            tags = ["shrinkage", "dead_codes", "poor_coverage", "excess_distortion"]
            yield case(f"anchored@{live}/{tight}", k, "shrunk", tags, live=live, tight=tight), anchored, x, lab
        exploded = km.clone()
        idx = torch.randperm(k, generator=g)[: max(1, int(0.3 * k))]
        exploded[idx] = mean + 1000.0 * (km[idx] - mean)
        yield case("exploded", k, "underused", ["dead_codes"]), exploded, x, lab


def named_cases(seed: int):
    """The issue's named cases, with their expected outcome (checked by tests/metrics/test_verdicts.py too)."""
    x, lab = mixture(6000, seed=seed, d=64, decay=1.0)
    xt, labt = mixture(6000, seed=seed + 1, d=64, decay=1.0)
    mean = xt.mean(0)
    g = torch.Generator().manual_seed(seed)
    out = []
    km = kmeans(xt, 256, iters=20, seed=seed)
    out.append(("pull 0.6x toward the mean (K=256, D=64)", mean + 0.6 * (km - mean), x, lab, "shrunk"))
    out.append(("3 of 10 modes (K=256, D=64)", kmeans(xt[labt < 3], 256, iters=20, seed=seed), x, lab, "shrunk"))
    anchored = torch.cat([kmeans(xt, 38, iters=20, seed=seed), 0.05 * xt[:218]])
    out.append(("anchored: 38 live k-means codes, 218 clumped at 0.05x scale (K=256, D=64)", anchored, x, lab,
                "shrunk"))
    for k in (16, 32, 64):
        out.append((f"k-means K={k} in D=64", kmeans(xt, k, iters=20, seed=seed), x, lab, "healthy"))
    km1024 = kmeans(xt, 1024, iters=10, seed=seed)
    parked = km1024.clone()
    far = 20.0 * float(xt.std(0).norm())
    dirs = torch.randn(200, 64, generator=g)
    parked[:200] = mean + far * dirs / dirs.norm(dim=1, keepdim=True)
    out.append(("200 of 1024 codes parked far away", parked, x, lab, "underused"))
    xs, ls = mixture(6000, seed=seed, d=32, sphere=True, sep=1.5)
    u = xs.mean(0) / xs.mean(0).norm()
    cap = u + 1.13 * torch.randn(256, 32, generator=g) / math.sqrt(32)  # cosine spread 0.56
    out.append(("sphere cap (K=256, D=32)", cap / cap.norm(dim=1, keepdim=True), xs, ls, "shrunk"))
    vqgan = torch.randn(256, generator=g) * 5 + 0.01 * torch.randn(1024, 256, generator=g)
    out.append(("VQGAN layout: 1024 near-parallel codes, no latents", vqgan, None, None, "not healthy"))
    return out


# ---------------------------------------------------------------------------------------------- real runs
def _ae(d_in: int, d_z: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    enc = torch.nn.Sequential(torch.nn.Linear(d_in, 128), torch.nn.GELU(), torch.nn.Linear(128, d_z))
    dec = torch.nn.Sequential(torch.nn.Linear(d_z, 128), torch.nn.GELU(), torch.nn.Linear(128, d_in))
    return enc, dec


def vqp_runs(ks: list[int], steps: int, seed: int):
    """vector-quantize-pytorch variants on a 10-mode mixture; yields ``(case, codebook, latents, labels, mse)``."""
    from vector_quantize_pytorch import VectorQuantize

    xtr, _ = mixture(8000, d=32, seed=seed, sep=3.0)
    xte, lte = mixture(3000, d=32, seed=seed + 1, sep=3.0)
    variants = {
        "vqp_random": {}, "vqp_kmeans": {"kmeans_init": True}, "vqp_deferred": {"kmeans_init": True},
        "vqp_dead_expiry": {"threshold_ema_dead_code": 2}, "vqp_cosine": {"use_cosine_sim": True},
        "vqp_rotation": {"rotation_trick": True},
    }  # all but vqp_rotation use the straight-through estimator (the library's default is the rotation trick)
    for k in ks:
        for name, kw in variants.items():
            torch.manual_seed(seed)
            enc, dec = _ae(32, 16)
            vq = VectorQuantize(dim=16, codebook_size=k, decay=0.9, commitment_weight=0.25,
                                **{"rotation_trick": False, **kw})
            opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *vq.parameters()], lr=2e-3)
            g = torch.Generator().manual_seed(seed)
            warm = steps // 2 if name == "vqp_deferred" else 0
            for step in range(steps):
                xb = xtr[torch.randint(0, len(xtr), (256,), generator=g)]
                z = enc(xb)
                loss = torch.zeros(())
                if step >= warm:
                    z, _, loss = vq(z)
                    loss = loss.sum()
                loss = loss + (dec(z) - xb).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            vq.eval()
            with torch.no_grad():
                z = enc(xte)
                zq, _, _ = vq(z)
                mse = float((dec(zq) - xte).pow(2).mean())
                cb = vq.codebook.detach().reshape(-1, 16)
                if kw.get("use_cosine_sim"):
                    z = torch.nn.functional.normalize(z, dim=-1)
                    cb = torch.nn.functional.normalize(cb, dim=-1)
            yield {"id": f"real/{name}/K{k}", "family": name, "latents": "real-mix32", "K": k, "D": 16,
                   "group": f"vqp/K{k}", "tags": []}, cb, z, lte, mse


def reference_runs(ks: list[int], steps: int, seed: int):
    """The bundled reference tokenizer, early vs deferred quantization, Euclidean vs l2."""
    from shrinkscope.reference.data import load_dataset
    from shrinkscope.reference.train import TrainConfig, tokenizer_config_for, train_tokenizer

    data = load_dataset("gaussians", seed=seed, n_train=6000, n_test=3000)
    for k in ks:
        for l2 in (False, True):
            for arm, start in (("early", 0), ("deferred", steps // 2)):
                cfg = tokenizer_config_for(data, num_codes=k, code_dim=8, quantize_start=start, l2_normalize=l2)
                model, _ = train_tokenizer(cfg, data, TrainConfig(steps=steps, seed=seed, kmeans_items=2000),
                                           progress=False)
                with torch.no_grad():
                    z = model.latents(data.test)
                    mse = float((model(data.test)["recon"] - data.test).pow(2).mean())
                    cb = model.quantizer.effective_codebook()
                name = f"ref_{arm}_{'l2' if l2 else 'euclid'}"
                yield {"id": f"real/{name}/K{k}", "family": name, "latents": "real-gaussians", "K": k, "D": 8,
                       "group": f"ref/{'l2' if l2 else 'euclid'}/K{k}", "tags": []}, cb, z, data.test_modes, mse


def label_by_outcome(cases: list[dict]) -> None:
    """Real runs: held-out reconstruction MSE against the best run of the same group decides the label."""
    best: dict[str, float] = {}
    for c in cases:
        if "mse" in c:
            best[c["group"]] = min(best.get(c["group"], float("inf")), c["mse"])
    for c in cases:
        if "mse" in c:
            c["mse_ratio"] = c["mse"] / best[c["group"]]
            c["truth"] = "shrunk" if c["mse_ratio"] >= 1.5 else "healthy" if c["mse_ratio"] <= 1.2 else "ambiguous"
