"""The reproduction plan and its tables (no training here; the CPU smoke plans are exercised by the slow tests)."""
import json
from pathlib import Path

import pytest

from shrinkscope.reference import repro_tables, reproduce, study
from shrinkscope.reference.arms import ARM_NAMES, KNOBS, LRS, TUNED, ArmSettings, tune_grid

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_plan_three_seeds_per_cell_priority_order():
    cells = reproduce.paper_cells()
    keys = [(c["code_dim"], c["num_codes"], c["arm"]) for c in cells]
    assert all(keys.count(k) == 3 for k in set(keys))  # every cell has seeds 0, 1, 2
    assert keys[:6] == [(256, 1024, "early")] * 3 + [(256, 1024, "deferred")] * 3  # Paper B's cell first
    assert {c["settings"]["fraction"] for c in reproduce.warmup_cells()} == {0.5}


def test_every_arm_gets_the_same_tuning_budget():
    grids = {a: tune_grid(a) for a in ARM_NAMES}
    assert {len(g) for g in grids.values()} == {2 * len(LRS)}
    for arm, grid in grids.items():
        knob = KNOBS[arm][0]
        assert len({(s.lr, getattr(s, knob)) for s in grid}) == 2 * len(LRS)
        assert TUNED[arm] in grid  # the chosen setting comes from the arm's own grid
        assert min(LRS) < TUNED[arm].lr < max(LRS)  # chosen inside the grid, not at its edge
    assert len(reproduce.tune_cells()) == len(reproduce.SEEDS) * sum(len(g) for g in grids.values())


def test_published_tables_and_tuned_settings_come_from_the_committed_cells():
    rows = reproduce.read_cells(DOCS / "study-h200-repro.jsonl")
    md = (DOCS / "study-h200-repro.md").read_text()
    for table in (repro_tables.paper_tables(rows), repro_tables.tune_table(rows), repro_tables.study_tables(rows)):
        assert table in md  # the doc is regenerated from the raw cells, not edited by hand
    choice = repro_tables.tune_choice(rows)
    assert set(choice) == set(ARM_NAMES)
    for arm, (best, interior) in choice.items():
        assert ArmSettings(**best["settings"]) == TUNED[arm] and interior and best["seeds"] == len(reproduce.SEEDS)


def test_plans_start_in_priority_order_whatever_the_order_asked():
    cells = reproduce.planned_cells(["study", "paper", "tune"])
    plans = [c["plan"] for c in cells]
    assert plans == sorted(plans, key=["tune", "paper", "study"].index)  # tuning first, the old study last
    assert plans.count("tune") == len(reproduce.tune_cells()) and plans.count("study") == len(study.tasks(study.FULL))


def test_study_cells_digits_first_seed_major():
    cells = reproduce.study_cells()
    assert sorted(map(study.task_key, cells)) == sorted(map(study.task_key, study.tasks(study.FULL)))
    order = [(study.DATASETS.index(c["dataset"]), c["seed"]) for c in cells]
    assert order == sorted(order) and cells[0]["dataset"] == "stacked-digits"  # a deadline cuts whole seeds last
    assert all(c["plan"] == "study" and c["arm"] == ("early" if c["fraction"] == 0 else "deferred") for c in cells)


def _row(arm, seed, dim, frac=0.0, status=None):
    status = status or ("shrunk" if arm == "early" else "healthy")
    reasons = [{"code": "excess_distortion", "metric": "excess_distortion", "value": 1.0 + seed, "reference": 0.0,
                "reference_name": "k-means", "threshold": 0.5, "direction": "max"}] if status == "shrunk" else []
    return {"plan": "paper", "code_dim": 256, "num_codes": 1024, "arm": arm, "seed": seed,
            "settings": {"fraction": frac}, "warnings": [], "verdict": {"status": status, "reasons": reasons},
            "metrics": {"effective_dimension": dim, "recon_mse": 0.01, "spread_ratio": 0.3 if arm == "early" else 0.9}}


def test_tables_mean_std_and_verdict_counts(tmp_path):
    rows = [_row("early", s, 5) for s in range(3)] + [_row("deferred", 0, 8, 0.25),
                                                       _row("deferred", 1, 10, 0.25, status="some_new_status")]
    (tmp_path / "cells.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    md = repro_tables.write_tables(tmp_path)
    early, reasons = [ln for ln in md.splitlines() if "| early |" in ln]
    deferred = next(ln for ln in md.splitlines() if "| deferred 25% |" in ln)
    assert "5 ± 0" in early and early.endswith("| shrunk 3 |")
    assert "9 ± 1.41 (n=2)" in deferred  # a missing seed is shown, not hidden
    assert deferred.endswith("| healthy 1, some_new_status 1 |")  # an unknown status is counted, not dropped
    assert "excess_distortion 2 (max 0.5) in 3" in reasons  # mean of 1, 2, 3 over the three runs that cite it
    assert (tmp_path / "tables.md").read_text().strip() == md.strip()


def _tune_row(arm, lr, mse, **extra):
    knob = KNOBS[arm][0]
    return {"plan": "tune", "arm": arm, "code_dim": 64, "num_codes": 512, "seed": 0, "skipped": False,
            "settings": {"lr": lr, knob: KNOBS[arm][1][0], "fraction": 0.25}, "verdict": {"status": "healthy"},
            "metrics": {"recon_mse": mse, "spread_ratio": 0.9}, **extra}


def test_tune_table_shows_every_run_and_says_when_the_choice_is_at_the_grid_edge():
    rows = [_tune_row("deferred", lr, 0.02 - lr) for lr in LRS[:-1]]
    rows += [_tune_row("deferred", LRS[-1], None, diverged=True, metrics={"recon_mse": None})]
    rows += [_tune_row("early", lr, 0.01 + abs(lr - LRS[2])) for lr in LRS[:-1]]
    rows += [{**_tune_row("early", LRS[-1], None), "skipped": True, "error": "RuntimeError('boom')"}]
    choice = repro_tables.tune_choice(rows)
    assert choice["deferred"][0]["settings"]["lr"] == LRS[-2] and choice["deferred"][1]  # below a diverged edge
    assert choice["early"][0]["settings"]["lr"] == LRS[2] and choice["early"][1]
    rows_edge = [_tune_row("l2", lr, 0.02 - lr) for lr in LRS]
    assert repro_tables.tune_choice(rows_edge)["l2"][0]["settings"]["lr"] == LRS[-1]
    assert not repro_tables.tune_choice(rows_edge)["l2"][1]
    md = repro_tables.tune_table(rows + rows_edge)
    assert md.count("| yes") == 3 and "yes (grid edge)" in md
    assert "diverged (non-finite)" in md and "failed: RuntimeError('boom')" in md
    assert len(md.splitlines()) == 2 + len(rows) + len(rows_edge)  # every run has its row


def test_tune_choice_is_the_lowest_mean_over_seeds_among_configs_with_every_seed():
    rows = [{**_tune_row("early", LRS[1], m), "seed": i} for i, m in enumerate((0.010, 0.020, 0.030))]  # mean .02
    rows += [{**_tune_row("early", LRS[2], m), "seed": i} for i, m in enumerate((0.015, 0.016, 0.017))]  # mean .016
    rows += [_tune_row("early", LRS[3], 0.001)]  # best single run, but only one of three seeds finished
    rows += [{**_tune_row("early", LRS[3], None), "seed": 1, "skipped": True}]
    rows += [{**_tune_row("early", LRS[0], m), "seed": i} for i, m in enumerate((0.001, 0.002))]
    rows += [{**_tune_row("early", LRS[0], None, diverged=True, metrics={"recon_mse": None}), "seed": 2}]
    best, interior = repro_tables.tune_choice(rows)["early"]
    assert best["settings"]["lr"] == LRS[2] and best["seeds"] == 3 and interior
    assert abs(best["recon_mse"] - 0.016) < 1e-12
    md = repro_tables.tune_table(rows)
    assert "diverged (non-finite) in 1 of 3" in md and "0.01600 ± 0.00100 |" in md
    assert len(md.splitlines()) == 2 + 4  # one row per configuration


def test_read_cells_keeps_a_resumed_cells_finished_line(tmp_path):
    a, b = _row("early", 0, 5), _row("early", 1, 5)
    lines = [{**a, "skipped": True}, {**a, "skipped": False}, {**a, "skipped": True}, {**b, "skipped": True}]
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = reproduce.read_cells(tmp_path / "cells.jsonl")
    assert [(r["seed"], r["skipped"]) for r in rows] == [(0, False), (1, True)]


def test_study_tables_from_the_pool_rows():
    rows = [{"plan": "study", "dataset": "gaussians", "num_codes": 64, "fraction": 0.0, "seed": s, "sweep": "size",
             "code_dim": 8, "arm": "early", "skipped": False, "metrics": {"recon_mse": 0.1 + 0.2 * s}} for s in (0, 1)]
    rows.append({**rows[0], "seed": 2, "skipped": True, "metrics": None})
    md = repro_tables.study_tables(rows)
    assert md.startswith(f"Runs: 2 of {len(study.tasks(study.FULL))} planned done, 0 failed, 1 skipped")
    row = next(ln for ln in md.splitlines() if ln.startswith("| 64 | early |"))
    assert "0.2 ± 0.14" in row and row.endswith("| 2 |")


@pytest.mark.slow
def test_smoke_plan_runs_on_cpu(tmp_path):
    assert reproduce.main(["--plan", "smoke", "--out", str(tmp_path), "--workers", "1"]) == 0
    cells = reproduce.read_cells(tmp_path / "cells.jsonl")
    assert [c["arm"] for c in cells if not c["skipped"]] and all("metrics" in c for c in cells)
    assert all(c["verdict"]["status"] in {"shrunk", "underused", "healthy", "cannot_tell"} for c in cells)
    assert all(c["metrics"]["token_mode_entropy"] is not None for c in cells)  # labels reached the verdict
    lines = (tmp_path / "cells.jsonl").read_text()
    assert reproduce.main(["--plan", "smoke", "--out", str(tmp_path), "--workers", "1", "--resume"]) == 0
    assert (tmp_path / "cells.jsonl").read_text() == lines  # every cell had finished: nothing ran again


@pytest.mark.slow
def test_study_cell_runs_through_the_reproduction_pool(tmp_path):
    cell = reproduce.study_cells(smoke=True)[0]
    res = reproduce.run_cell(cell, "cpu", float("inf"))
    assert res["plan"] == "study" and not res["skipped"] and res["metrics"]["recon_mse"] > 0
    assert study.task_key(res) == study.task_key(cell)
