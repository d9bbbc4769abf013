"""k-NN coverage and precision of a codebook over the latent cloud (Naeem et al. 2020, "PRDC").

Each latent owns a ball whose radius is the distance to its k-th nearest neighbour among the latents.
``latent_coverage`` is the share of latents whose ball holds at least one code; ``codebook_precision``
is the share of codes inside at least one latent's ball. Comparisons are strict (``<``), as in the
``prdc`` package.

How it stays fast and exact: distances are searched block by block (memory O(chunk * N), never N x N)
with float32 matrix products on centred data, and every decision that float32 round-off could flip
is re-checked in float64. The float32 error of a squared distance ``||a||^2 + ||b||^2 - 2 a.b`` is at
most ``(2D + 32) * u * (||a||^2 + ||b||^2)`` (``u = 2^-24``), so only pairs within that margin of a
ball's edge are recomputed, by direct float64 differences. When TF32/bf16 matrix products are enabled
(``torch.set_float32_matmul_precision``), the search runs in float64 instead. The result equals an all-float64 computation; ``tests/metrics`` checks it against the
``prdc`` package and against a plain loop.
"""
from __future__ import annotations

from typing import Any

import torch

from ._validate import as_float, common, row_chunk, same_dim


def _search_dtype(device: torch.device) -> tuple[torch.dtype, float]:
    """dtype of the fast distance search and its unit round-off.

    float32 when float32 matrix products run at full precision; when the user allowed TF32/bf16
    products (``torch.set_float32_matmul_precision`` or ``allow_tf32``), float64 instead, since a
    10-bit mantissa would leave nearly every decision to the re-check.
    """
    reduced = torch.get_float32_matmul_precision() != "highest"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        reduced = True
    return (torch.float64, 2.0 ** -53) if reduced else (torch.float32, 2.0 ** -24)


class _Points:
    """One point set: float64 rows as given (exact checks) and search-dtype rows centred on a shared origin.

    Exact checks use direct differences of the uncentred rows, so equal distances (lattice data,
    codes copied from latents) stay exactly equal and the strict ``<`` behaves as in the ``prdc`` package.
    """

    def __init__(self, x: torch.Tensor, origin: torch.Tensor):
        self.raw = x.double()
        centred = self.raw - origin
        dtype, self.unit_roundoff = _search_dtype(x.device)
        self.xs = centred.to(dtype)
        self.sq64 = (centred * centred).sum(1)  # feeds the tolerances and the fast search
        self.sqs = self.sq64.to(dtype)
        self.n = x.shape[0]
        self.dim = x.shape[1]


_TOL_SAFETY = 1.0  # tests raise this to force every decision through the float64 path
_SQUARE_BLOCK = 2896  # side of the square blocks of the k-NN search: about 8M elements (32 MiB float32)


def _tol_scale(p: _Points) -> float:
    """c such that |fast - exact| squared distance <= c * (||a||^2 + ||b||^2) for centred rows a, b."""
    return (2 * p.dim + 32) * p.unit_roundoff * _TOL_SAFETY


def _block(a: _Points, s: int, e: int, b: _Points) -> torch.Tensor:
    """Approximate squared distances of rows ``s:e`` of ``a`` to all of ``b`` (search dtype, ``(e-s, b.n)``)."""
    d2 = torch.addmm(b.sqs[None, :], a.xs[s:e], b.xs.t(), alpha=-2.0)
    return d2.add_(a.sqs[s:e, None])


def _exact_rows(a: _Points, rows: torch.Tensor, b: _Points) -> torch.Tensor:
    """Float64 squared distances (direct differences) of the selected rows of ``a`` to all of ``b``."""
    xa = a.raw[rows]
    out = torch.empty(xa.shape[0], b.n, dtype=torch.float64, device=xa.device)
    step = max(1, (1 << 22) // max(1, xa.shape[0] * a.dim))
    for s in range(0, b.n, step):
        out[:, s:s + step] = (xa[:, None, :] - b.raw[None, s:s + step, :]).pow(2).sum(2)
    return out


def _merge(best_v: torch.Tensor, best_i: torch.Tensor, rows: slice, v: torch.Tensor, i: torch.Tensor) -> None:
    """Keep the m smallest of the running candidates of ``rows`` and the new ones ``(v, i)``."""
    vv = torch.cat([best_v[rows], v], 1)
    ii = torch.cat([best_i[rows], i], 1)
    top, pos = torch.topk(vv, best_v.shape[1], dim=1, largest=False)
    best_v[rows], best_i[rows] = top, ii.gather(1, pos)


@torch.no_grad()
def _knn_sq_radii(p: _Points, k: int) -> torch.Tensor:
    """Squared distance from every row to its k-th nearest *other* row, exact in float64.

    The fast search visits each pair of row blocks once (distances are symmetric: a block serves its
    rows and, transposed, its columns) and keeps the m = 2k nearest candidates of every row; their
    distances are then recomputed exactly, and a row whose k-th neighbour could lie outside its
    candidates (by the round-off bound) is recomputed against all rows.
    """
    n, dev = p.n, p.raw.device
    tol = _tol_scale(p) * (p.sq64 + p.sq64.max())
    m = min(n - 1, 2 * k)  # k candidates plus a margin of k more
    best_v = torch.full((n, m), float("inf"), dtype=p.xs.dtype, device=dev)
    best_i = torch.zeros((n, m), dtype=torch.long, device=dev)
    bs = max(m + 1, _SQUARE_BLOCK)
    for s in range(0, n, bs):
        e = min(n, s + bs)
        for t in range(s, n, bs):
            u = min(n, t + bs)
            d2 = torch.addmm(p.sqs[None, t:u], p.xs[s:e], p.xs[t:u].t(), alpha=-2.0).add_(p.sqs[s:e, None])
            if s == t:
                d2.fill_diagonal_(float("inf"))  # a point is not its own neighbour
            v, i = torch.topk(d2, min(m, u - t), dim=1, largest=False)
            _merge(best_v, best_i, slice(s, e), v, i + t)
            if s != t:
                v, i = torch.topk(d2, min(m, e - s), dim=0, largest=False)
                _merge(best_v, best_i, slice(t, u), v.t(), i.t() + s)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    step = row_chunk(m * p.dim, budget=1 << 22)  # bounds the float64 (rows, m, D) candidate block
    for s in range(0, n, step):
        e = min(n, s + step)
        exact = (p.raw[s:e, None, :] - p.raw[best_i[s:e]]).pow(2).sum(2).sort(1).values  # (rows, m)
        kth = exact[:, k - 1]
        if m < n - 1:
            # every non-candidate has fast distance >= best_v[:, -1], so exact >= best_v[:, -1] - tol
            bad = (best_v[s:e, -1].double() - tol[s:e] < kth).nonzero().flatten()
            if bad.numel():
                full = _exact_rows(p, bad + s, p)
                full[torch.arange(bad.numel(), device=full.device), bad + s] = float("inf")
                kth[bad] = full.kthvalue(k, dim=1).values
        out[s:e] = kth
    return out


@torch.no_grad()
def knn_radii(x: Any, *, k: int = 5, name: str = "latents") -> torch.Tensor:
    """Distance from every row to its k-th nearest other row.

    Args:
        x: ``(N, D)`` rows, N > k.
        k: neighbour rank (k >= 1).
        name: argument name for error messages.

    Returns:
        ``(N,)`` float64 radii on ``x``'s device.
    """
    if k < 1:
        raise ValueError(f"k: expected k >= 1, got {k}")
    t = as_float(x, name, min_rows=k + 1)
    p = _Points(t, t.double().mean(0))
    return _knn_sq_radii(p, k).sqrt()


def _pair_sq(a: _Points, ia: torch.Tensor, b: _Points, ib: torch.Tensor) -> torch.Tensor:
    """Float64 squared distances of the pairs ``(a[ia[t]], b[ib[t]])`` (direct differences, in pieces)."""
    out = torch.empty(ia.numel(), dtype=torch.float64, device=a.raw.device)
    step = max(1, (1 << 22) // a.dim)
    for s in range(0, ia.numel(), step):
        out[s:s + step] = (a.raw[ia[s:s + step]] - b.raw[ib[s:s + step]]).pow(2).sum(1)
    return out


def _ball_pass(real: _Points, fake: _Points, r2_real: torch.Tensor, r2_fake: torch.Tensor | None,
               *, density: bool = False, columns: bool = True) -> dict[str, torch.Tensor]:
    """One blocked pass over real x fake distances; every ball test certified in float64.

    Returns per-real ``covered`` (a fake point inside the real point's ball) and, when ``r2_fake`` is
    given, ``recalled`` (the real point inside some fake ball); per-fake ``inside`` (inside some real
    ball) and, with ``density``, ``count`` (number of real balls holding it). ``columns=False`` skips
    the per-fake work (``inside`` is then not computed).
    """
    dev = real.raw.device
    c = _tol_scale(real)
    fake_max, real_max = float(fake.sq64.max()), float(real.sq64.max())
    covered = torch.zeros(real.n, dtype=torch.bool, device=dev)
    recalled = torch.zeros(real.n, dtype=torch.bool, device=dev)
    inside = torch.zeros(fake.n, dtype=torch.bool, device=dev)
    count = torch.zeros(fake.n, dtype=torch.int64, device=dev)
    unsure_fake = torch.zeros(fake.n, dtype=torch.bool, device=dev)
    tol_fake = (c * (fake.sq64 + real_max)).to(fake.xs.dtype)  # bounds the error of any pair in a column
    r2r = r2_real.to(real.xs.dtype)
    step = row_chunk(fake.n)
    for s in range(0, real.n, step):
        e = min(real.n, s + step)
        d2 = _block(real, s, e, fake)
        tol_row = c * (real.sq64[s:e] + fake_max)  # bounds the error of any pair in a row
        # coverage: the nearest fake point against this real point's ball
        near = d2.min(1).values.double()
        cov = near + tol_row < r2_real[s:e]
        unsure = ~cov & (near - tol_row < r2_real[s:e])
        if r2_fake is not None:
            gap = (d2 - r2_fake.to(d2.dtype)[None, :]).min(1).values.double()
            rec = gap + tol_row < 0
            unsure |= ~rec & (gap - tol_row < 0)
            recalled[s:e] = rec
        covered[s:e] = cov
        if unsure.any():
            rows = unsure.nonzero().flatten() + s
            exact = _exact_rows(real, rows, fake)
            covered[rows] = (exact < r2_real[rows, None]).any(1)
            if r2_fake is not None:
                recalled[rows] = (exact < r2_fake[None, :]).any(1)
        if not columns:
            continue
        # fake columns against the balls of this block's real rows
        gap = d2.sub_(r2r[s:e, None])
        if density:
            # every pair counts: decide each one, re-checking only the pairs within its own error bound
            tol = torch.add(c * real.sqs[s:e, None], c * fake.sqs[None, :])
            count += (gap < -tol).sum(0)
            amb = (gap.abs_() <= tol).nonzero()
            if amb.numel():
                i, j = amb[:, 0] + s, amb[:, 1]
                hit = _pair_sq(real, i, fake, j) < r2_real[i]
                count.index_add_(0, j[hit], torch.ones_like(j[hit]))
        else:
            colmin = gap.min(0).values
            inside |= colmin < -tol_fake
            unsure_fake |= colmin.abs() <= tol_fake
    if density:
        inside = count > 0
    elif columns:
        cols = (unsure_fake & ~inside).nonzero().flatten()
        for s in range(0, cols.numel(), row_chunk(real.n)):
            part = cols[s:s + row_chunk(real.n)]
            inside[part] = (_exact_rows(fake, part, real) < r2_real[None, :]).any(1)
    out = {"covered": covered, "inside": inside}
    if r2_fake is not None:
        out["recalled"] = recalled
    if density:
        out["count"] = count
    return out


def _check(codebook: Any, latents: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if k < 1:
        raise ValueError(f"k: expected k >= 1, got {k}")
    cb = as_float(codebook, "codebook", min_rows=1)
    x = as_float(latents, "latents")
    if x.shape[0] < k + 1:
        raise ValueError(f"latents: k-NN balls with k={k} need at least {k + 1} latents, got {x.shape[0]}")
    same_dim(cb, x)
    return common(cb, x)


@torch.no_grad()
def coverage_and_precision(codebook: Any, latents: Any, *, k: int = 5,
                           radii: torch.Tensor | None = None) -> tuple[float, float]:
    """``(latent_coverage, codebook_precision)`` from one shared pass (what ``codebook_health`` uses)."""
    return _coverage(codebook, latents, k, radii, precision=True)


def _coverage(codebook: Any, latents: Any, k: int, radii: torch.Tensor | None,
              *, precision: bool) -> tuple[float, float]:
    cb, x = _check(codebook, latents, k)
    origin = x.double().mean(0)
    lat, codes = _Points(x, origin), _Points(cb, origin)
    if radii is None:
        r2 = _knn_sq_radii(lat, k)
    else:
        r = torch.as_tensor(radii).to(x.device, torch.float64)
        if r.shape != (x.shape[0],):
            raise ValueError(f"radii: expected shape ({x.shape[0]},) (one per latent), got {tuple(r.shape)}")
        r2 = r * r
    res = _ball_pass(lat, codes, r2, None, columns=precision)
    prec = float(res["inside"].double().mean()) if precision else float("nan")
    return float(res["covered"].double().mean()), prec


@torch.no_grad()
def latent_coverage(codebook: Any, latents: Any, *, k: int = 5, radii: torch.Tensor | None = None) -> float:
    """Share of latents whose k-NN ball (among latents) holds at least one code; higher is better.

    Args:
        codebook: ``(K, D)`` codes.
        latents: ``(N, D)`` latents, N > k.
        k: neighbour rank defining the balls.
        radii: precomputed ``knn_radii(latents, k=k)`` to reuse.

    Returns:
        A float in ``[0, 1]``.

    Example:
        >>> x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
        >>> latent_coverage(x[:50], x) > latent_coverage(x[:50] * 0.1, x)
        True
    """
    return _coverage(codebook, latents, k, radii, precision=False)[0]


@torch.no_grad()
def codebook_precision(codebook: Any, latents: Any, *, k: int = 5, radii: torch.Tensor | None = None) -> float:
    """Share of codes inside at least one latent's k-NN ball; higher is better.

    Args:
        codebook: ``(K, D)`` codes.
        latents: ``(N, D)`` latents, N > k.
        k: neighbour rank defining the balls.
        radii: precomputed ``knn_radii(latents, k=k)`` to reuse.

    Returns:
        A float in ``[0, 1]``.
    """
    return coverage_and_precision(codebook, latents, k=k, radii=radii)[1]
