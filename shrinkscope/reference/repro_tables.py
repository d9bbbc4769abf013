"""Markdown tables of the reproduction cells (``reproduce.py``): the papers' tables beside the published numbers,
each cell's verdicts and their deciding measurements, the tuning grid, and the older study's tables.

    python -m shrinkscope.reference.reproduce --tables-only --out repro     # OUT/tables.md from OUT/cells.jsonl
"""
from __future__ import annotations

import json
from pathlib import Path

from .arms import ARM_NAMES, KNOBS, LRS
from .reproduce import HEALTH_LATENTS, PUBLISHED, _spec, read_cells

__all__ = ["paper_tables", "study_tables", "tune_choice", "tune_table", "verdict_counts", "verdict_reasons",
           "write_tables"]


def _stats(vals: list) -> tuple[float, float, int] | None:
    v = [float(x) for x in vals if x is not None]
    if not v:
        return None
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return m, sd, len(v)


def _cell(vals: list, fmt: str = ".3g") -> str:
    st = _stats(vals)
    if st is None:
        return "–"
    m, sd, n = st
    return f"{m:{fmt}} ± {sd:{fmt}}" + ("" if n == 3 else f" (n={n})")


def _group(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def verdict_counts(rows: list[dict]) -> str:
    """``"shrunk 2, healthy 1"``: how many runs got each verdict status (unknown statuses are counted too)."""
    from collections import Counter

    c = Counter((r.get("verdict") or {}).get("status", "none") for r in rows)
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def verdict_reasons(rows: list[dict]) -> str:
    """The deciding measurements over the runs: ``metric mean value (min or max threshold) in n of the runs``.

    A reason is cited whether it passed or failed its threshold (a healthy verdict cites the checks it passed).
    """
    seen: dict[tuple, list[float]] = {}
    for r in rows:
        for x in (r.get("verdict") or {}).get("reasons", []):
            if x.get("value") is not None:
                seen.setdefault((x["metric"], x["direction"], x["threshold"]), []).append(float(x["value"]))
    parts = [f"{m} {sum(v) / len(v):.3g} ({d} {t:.3g}) in {len(v)}"
             for (m, d, t), v in sorted(seen.items(), key=lambda kv: -len(kv[1]))]
    return "; ".join(parts) or "–"


def _arm_label(arm: str, frac: float) -> str:
    return f"deferred {frac:.0%}" if arm == "deferred" else arm


def _judged(done: list[dict]) -> str:
    """How many held-out latents the verdicts read: cells written before ``judged_latents`` read 10,000."""
    sizes = sorted({r.get("judged_latents", HEALTH_LATENTS) for r in done})
    if sizes == [HEALTH_LATENTS]:
        return f"{HEALTH_LATENTS:,}"
    return f"max({HEALTH_LATENTS:,}, 4K) ({', '.join(f'{n:,}' for n in sizes)})"


def paper_tables(rows: list[dict], *, plan: str = "paper") -> str:
    """Markdown: every cell's metrics (mean ± std over seeds) with its verdicts, then the deciding measurements."""
    done = [r for r in rows if r.get("plan") == plan and not r.get("skipped") and "metrics" in r]
    sp = _spec(plan)
    out = [(f"Stacked digits, {sp['steps']} tokenizer steps, batch {sp['batch_size']}, conv tokenizer width "
           f"{sp['hidden']}, 4x4 token grid, Euclidean EMA codebook (decay 0.99, beta 0.25, Adam 1e-3), "
           f"deferred N% = continuous for the first N% of the steps. Metrics on {sp['n_test']:,} held-out images "
           f"({16 * sp['n_test']:,} latents); mean ± std over seeds 0, 1, 2 (n shown when fewer finished). "
           f"Verdict: `codebook_health` on {_judged(done)} of those latents with their digit-triple labels "
           f"(k-means reference of the same K); the count of runs per status."
           + (f" Where K exceeds the judged latents there is no k-means reference: excess distortion "
              f"is blank and the verdict rests on usage and the codes alone (its `missing` field says so)."
              if any(r["num_codes"] > r.get("judged_latents", HEALTH_LATENTS) for r in done) else "")), ""]
    cols = [("codebook eff. dim", "effective_dimension", ".3g"), ("latent eff. dim", "latent_effective_dimension_all",
            ".3g"), ("cosine spread", "spread_cosine", ".3f"), ("usage perplexity", "usage_perplexity_all", ".4g"),
            ("spread ratio", "spread_ratio", ".2f"), ("dead codes", "dead_code_ratio", ".2f"),
            ("excess distortion", "excess_distortion", ".2f"), ("recon MSE", "recon_mse", ".4f")]
    out += ["| D | K | arm | " + " | ".join(c[0] for c in cols) + " | verdict (runs) |",
            "|" + "---|" * (len(cols) + 4)]
    keys = sorted({(r["code_dim"], r["num_codes"], r["arm"], r["settings"]["fraction"]) for r in done},
                  key=lambda t: (-t[0], t[1], ARM_NAMES.index(t[2]), t[3]))
    groups = {key: [r for r in _group(done, code_dim=key[0], num_codes=key[1], arm=key[2])
                    if r["settings"]["fraction"] == key[3]] for key in keys}
    for (d, k, arm, frac), g in groups.items():
        out.append(f"| {d} | {k:,} | {_arm_label(arm, frac)} | "
                   + " | ".join(_cell([r["metrics"].get(c) for r in g], f) for _, c, f in cols)
                   + f" | {verdict_counts(g)} |")
    out += ["", ("Deciding measurements (the verdict's reasons: mean value over the runs that cite it, its threshold "
                 "as a min or max, and in how many runs it is cited; passed checks are cited for a healthy verdict):"),
            "", "| D | K | arm | reasons |", "|---|---|---|---|"]
    out += [f"| {d} | {k:,} | {_arm_label(arm, frac)} | {verdict_reasons(g)} |" for (d, k, arm, frac), g in
            groups.items()]
    out += ["", "Published: Paper B codebook effective dimension " + PUBLISHED["paper_b_codebook_dim"] + "; Paper A "
            "cosine spread " + PUBLISHED["paper_a_spread"] + "; perplexity " + PUBLISHED["paper_a_perplexity"] + "."]
    return "\n".join(out)


def _tune_configs(rows: list[dict], arm: str) -> list[tuple[dict, list[dict]]]:
    """Arm ``arm``'s tuning configurations in grid order, each with its runs (one per seed)."""
    knob = KNOBS[arm][0]
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for r in _group(rows, plan="tune", arm=arm):
        groups.setdefault(json.dumps(r["settings"], sort_keys=True), (r["settings"], []))[1].append(r)
    return sorted(groups.values(), key=lambda g: (g[0]["lr"], g[0][knob]))


def _finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("skipped") and (r.get("metrics") or {}).get("recon_mse") is not None]


def tune_choice(rows: list[dict]) -> dict[str, tuple[dict, bool]]:
    """Per arm: the configuration of lowest mean validation MSE over its seeds, and whether its learning rate is
    interior to the grid (neither the smallest nor the largest value in ``arms.LRS``).

    A configuration competes only when every seed it ran finished with a finite MSE (one diverged seed marks
    a learning rate past stability) and it has the most seeds of any configuration of the arm, so a deadline
    that cut some seeds cannot favour a configuration measured on fewer. The choice is
    ``{"settings", "recon_mse" (mean), "seeds", "runs"}``.
    """
    out = {}
    for arm in ARM_NAMES:
        # (settings, finished runs) of each configuration whose every run that ran finished
        full = [(s, ok) for s, runs in _tune_configs(rows, arm)
                if (ok := _finished(runs)) and len(ok) == sum(not r.get("skipped") for r in runs)]
        if not full:
            continue
        most = max(len(ok) for _, ok in full)
        means = [(sum(r["metrics"]["recon_mse"] for r in ok) / most, s, ok) for s, ok in full if len(ok) == most]
        mean, s, ok = min(means, key=lambda m: m[0])
        out[arm] = ({"settings": s, "recon_mse": mean, "seeds": most, "runs": ok}, min(LRS) < s["lr"] < max(LRS))
    return out


def tune_table(rows: list[dict]) -> str:
    """Markdown: every tuning configuration's validation MSE over its seeds (or why it has none), its spread
    ratio, its verdicts and the choice per arm."""
    choice = tune_choice(rows)
    out = ["| arm | lr | knob | value | validation MSE | spread ratio | verdict (runs) | chosen |",
           "|---|---|---|---|---|---|---|---|"]
    for arm in ARM_NAMES:
        knob = KNOBS[arm][0]
        for s, runs in _tune_configs(rows, arm):
            ok, ran = _finished(runs), [r for r in runs if not r.get("skipped")]
            diverged = sum(bool(r.get("diverged")) for r in ran)
            if not ran:
                err = next((r["error"] for r in runs if r.get("error")), None)
                mse, sr = ("failed: " + err[:60]) if err else "not run (deadline)", "–"
            elif diverged:
                mse, sr = f"diverged (non-finite) in {diverged} of {len(ran)}", "–"
            else:
                mse = _cell([r["metrics"]["recon_mse"] for r in ok], ".5f")
                # spread ratio is None when the held-out latents have no spread (an encoder collapsed to a point)
                sr = _cell([r["metrics"].get("spread_ratio") for r in ok], ".2f")
                if any(r["metrics"].get("spread_ratio") is None for r in ok):
                    sr += " (latents constant in " + str(sum(r["metrics"].get("spread_ratio") is None
                                                              for r in ok)) + ")"
            chosen = arm in choice and choice[arm][0]["settings"] == s
            out.append(f"| {arm} | {s['lr']:g} | {knob} | {s[knob]:g} | {mse} | {sr} | "
                       f"{verdict_counts(ran) if ran else '–'} | "
                       f"{('yes' + ('' if choice[arm][1] else ' (grid edge)')) if chosen else ''} |")
    return "\n".join(out)


def study_tables(rows: list[dict]) -> str:
    """Markdown of the older study's tables (``study.markdown``) from its runs in ``rows``."""
    from . import study

    runs = [r for r in rows if r.get("plan") == "study"]
    done = sum(not r.get("skipped") for r in runs)
    head = (f"Runs: {done} of {len(study.tasks(study.FULL))} planned done, "
            f"{sum(bool(r.get('error')) for r in runs)} failed, {len(runs) - done} skipped or failed here.")
    return study.markdown(runs, study.SMOKE if any(r.get("smoke") for r in runs) else study.FULL, head=head)


def write_tables(out: Path) -> str:
    """Write ``OUT/tables.md`` from ``OUT/cells.jsonl`` (every plan found there) and return it."""
    rows = read_cells(out / "cells.jsonl")
    parts = [paper_tables(rows, plan=plan) for plan in ("paper", "smoke") if _group(rows, plan=plan)]
    if _group(rows, plan="tune"):
        parts.append(tune_table(rows))
    if _group(rows, plan="study"):
        parts.append(study_tables(rows))
    md = "\n\n".join(parts)
    (out / "tables.md").write_text(md + "\n")
    return md
