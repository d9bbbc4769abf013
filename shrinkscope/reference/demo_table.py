"""The demo's comparison table: rows, winners, the terminal text, and the mean +- std table over seeds.

The table isolates the codebook first (its verdict, what decides the verdict, and each measurement against
the arm's own latents and against k-means with the same K on them), then reconstruction, then the diversity
of prior samples, and last the absolute geometry, which mixes encoder and codebook effects.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ROWS", "comparison_rows", "decided_by", "format_table", "seed_table", "verdict_lines"]

CODEBOOK = "codebook vs its own latents and k-means"
GEOMETRY = "absolute geometry (mixes encoder and codebook)"
DIVERSITY = "generative diversity (prior samples)"


def _m(key: str) -> Callable[[dict], Any]:
    return lambda r: r["health"]["metrics"].get(key)


def _d(key: str) -> Callable[[dict], Any]:
    return lambda r: (r["diversity"] or {}).get(key)


def _rank_share(r: dict) -> float | None:
    m = r["health"]["metrics"]
    if m.get("effective_rank") is None or not m.get("latent_effective_rank"):
        return None
    return m["effective_rank"] / m["latent_effective_rank"]


def _verdict(r: dict) -> dict:
    return r["health"].get("verdict") or {}


def decided_by(verdict: dict) -> str | None:
    """What decides a verdict, in a few words: the metrics whose rules fired, most severe first, or "none
    fired". Their values are in the table's own rows; the thresholds in each arm's verdict summary under the
    table, and a healthy codebook's closest calls on its verdict card in the report.

    Example:
        >>> decided_by({"status": "shrunk", "reasons": [{"metric": "excess_distortion", "value": 2.1,
        ...     "threshold": 1.86, "direction": "max"}]})
        'excess_distortion'
    """
    if not verdict:
        return None
    reasons = verdict.get("reasons") or []
    fired = [r["metric"] for r in reasons if _fails(r)]
    if fired:
        return ", ".join(fired)
    return "none fired" if reasons else "no rule applied"  # a healthy card lists the closest calls


def _fails(r: dict) -> bool:
    v, thr = r.get("value"), r.get("threshold")
    if not isinstance(v, (int, float)) or not isinstance(thr, (int, float)):
        return False
    return v < thr if r.get("direction") == "min" else v > thr


def _warnings(r: dict) -> str:
    return ", ".join(w["code"] for w in r["health"]["warnings"]) or "none"


#: rows of the table: (section, label, getter, direction) with direction True = higher is better,
#: False = lower, None = closer to 1, "text" = not ranked. Rows whose values are all missing are left out,
#: so metric keys that a newer ``codebook_health`` adds appear without a change here.
ROWS: list[tuple[str, str, Callable[[dict], Any], Any]] = [
    (CODEBOOK, "verdict", lambda r: _verdict(r).get("status"), "text"),
    (CODEBOOK, "verdict decided by", lambda r: decided_by(_verdict(r)), "text"),
    (CODEBOOK, "warnings", _warnings, "text"),
    (CODEBOOK, "spread_vs_kmeans", _m("spread_vs_kmeans"), True),
    (CODEBOOK, "spread_all_vs_live", _m("spread_all_vs_live"), True),
    (CODEBOOK, "rank_vs_kmeans", _m("rank_vs_kmeans"), True),
    (CODEBOOK, "coverage_vs_kmeans", _m("coverage_vs_kmeans"), True),
    (CODEBOOK, "excess_distortion", _m("excess_distortion"), False),
    (CODEBOOK, "shrunk_mode_share", _m("shrunk_mode_share"), False),
    (CODEBOOK, "excess_unused_share", _m("excess_unused_share"), False),
    (CODEBOOK, "stranded_codes", _m("stranded_codes"), False),
    (CODEBOOK, "spread_ratio", _m("spread_ratio"), None),
    (CODEBOOK, "eff. rank / latents' eff. rank", _rank_share, True),
    (CODEBOOK, "codes_used", _m("codes_used"), True),
    (CODEBOOK, "dead_code_ratio", _m("dead_code_ratio"), False),
    (CODEBOOK, "utilization", _m("utilization"), True),
    (CODEBOOK, "token_mode_entropy", _m("token_mode_entropy"), True),
    ("reconstruction", "held-out recon MSE", lambda r: r["recon_mse"], False),
    ("reconstruction", "quantization_error", _m("quantization_error"), False),
    (DIVERSITY, "modes covered", _d("modes_covered"), True),
    (DIVERSITY, "mode KL to data (nats)", _d("mode_kl"), False),
    (DIVERSITY, "sample mode entropy (nats)", _d("mode_entropy"), True),
    (DIVERSITY, "mean pairwise L2 of samples", _d("mean_pairwise_l2"), True),
    (DIVERSITY, "precision", _d("precision"), True),
    (DIVERSITY, "recall", _d("recall"), True),
    (DIVERSITY, "density", _d("density"), True),
    (DIVERSITY, "coverage", _d("coverage"), True),
    (GEOMETRY, "spread_cosine", _m("spread_cosine"), True),
    (GEOMETRY, "effective_dimension", _m("effective_dimension"), True),
    (GEOMETRY, "latent_effective_dimension", _m("latent_effective_dimension"), True),
    (GEOMETRY, "utilization_perplexity", _m("utilization_perplexity"), True),
]


def _winners(vals: list, hib: Any) -> list[int]:
    """Indices of the best arms (several on a tie; none when a value is missing or the row is not ranked)."""
    if hib == "text":
        return []
    nums = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(nums) != len(vals) or len(vals) < 2:
        return []
    if hib is None:  # spread_ratio: closest to 1 wins
        keys = [-abs(math.log(max(v, 1e-12))) for v in vals]
    else:
        keys = [v if hib else -v for v in vals]
    best = max(keys)
    return [i for i, k in enumerate(keys) if k == best]


def comparison_rows(results: list[dict], *, rank: bool = True) -> list[dict]:
    """The table as dicts: ``section``, ``metric``, one value per arm, ``better`` (winning arm, arms joined by
    " = " on a partial tie, ``"tie"`` when all agree, ``""`` when a value is missing, the row is not ranked or
    ``rank=False``), ``direction``."""
    rows = []
    for section, label, get, hib in ROWS:
        vals = []
        for r in results:
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                vals.append(None)
        if all(v is None for v in vals):
            continue
        win = _winners(vals, hib) if rank else []
        if not win:
            better = ""
        elif len(win) == len(vals):
            better = "tie"
        else:  # a partial tie names every arm that shares the best value
            better = " = ".join(results[i]["arm"] for i in win)
        direction = {None: "closer to 1", True: "higher", False: "lower"}.get(hib, "") if hib != "text" else ""
        rows.append({"section": section, "metric": label, "values": vals, "better": better, "direction": direction})
    return rows


def format_table(rows: list[dict], arms: list[str], *, better: bool = True) -> str:
    """Plain-text table for the terminal, one block per section."""
    def fmt(v):
        if v is None:
            return "-"
        return f"{v + 0.0:.4g}" if isinstance(v, float) else str(v)  # + 0.0: no "-0"

    head = ["metric", "good", *arms] + (["better"] if better else [])
    body = [[r["metric"], r["direction"], *[fmt(v) for v in r["values"]]] + ([r["better"]] if better else [])
            for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    section = None
    for r, row in zip(rows, body):
        if r.get("section") != section:
            section = r.get("section")
            lines.append(f"-- {section} " + "-" * max(0, sum(widths) + 2 * len(widths) - len(section) - 4))
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def verdict_lines(results: list[dict]) -> list[str]:
    """One line per arm: its verdict's own summary (what the codebook is judged, and the measurements why)."""
    out = []
    for r in results:
        v = _verdict(r)
        if v:
            out.append(f"  {r['arm']}: {v.get('summary', v.get('status', '?'))}")
    return out


def _cell(vals: list) -> str:
    if any(isinstance(v, str) or v is None for v in vals):
        texts = ["-" if v is None else str(v) for v in vals]
        return texts[0] if len(set(texts)) == 1 else " / ".join(texts)
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.4g}"
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{m:.4g} ± {sd:.2g}"


def seed_table(folders: list[str | Path]) -> str:
    """Markdown table of several demo runs (one ``results.json`` per folder): mean ± sample std per arm, and
    in how many runs each arm was best (a tie counts for every arm in it). Text rows show the value once when
    every run agrees, else each run's value (``a / b / c``, in the order of ``folders``)."""
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    # rebuilt from each run's arms where they carry their measurements, so runs of an older version get
    # today's rows; else the run's own table
    tables = [comparison_rows(r["arms"], rank=not r.get("meta", {}).get("quick"))
              if all("health" in a for a in r["arms"]) else r["table"] for r in runs]
    arms = [a["arm"] for a in runs[0]["arms"]]
    lines = ["| section | metric | good | " + " | ".join(arms) + " | best (runs) |",
             "|---|---|---|" + "---|" * len(arms) + "---|"]
    for row in tables[0]:
        per = [p for t in tables for p in t if p["metric"] == row["metric"]]
        cells = [_cell([p["values"][j] for p in per]) for j in range(len(arms))]
        wins = {a: sum(a in p["better"].split(" = ") or p["better"] == "tie" for p in per) for a in arms}
        best = ", ".join(f"{a} {n}" for a, n in wins.items() if n) if row["direction"] else ""
        lines.append(f"| {row.get('section', '')} | {row['metric']} | {row['direction']} | " + " | ".join(cells)
                     + f" | {best} |")
    return "\n".join(lines)
