"""The GPU study's --smoke mode runs on CPU and writes its JSON and markdown."""
import json

import pytest

from shrinkscope.reference import study


def test_task_grid_full_plan():
    t = study.tasks(study.FULL)
    sizes = {x["num_codes"] for x in t}
    assert sizes == {64, 128, 256, 512, 1024, 2048, 4096}
    assert {x["fraction"] for x in t} == {0.0, 0.05, 0.10, 0.25, 0.50}
    assert len({(x["dataset"], x["num_codes"], x["fraction"], x["seed"]) for x in t}) == len(t)
    assert [x["seed"] for x in t] == sorted(x["seed"] for x in t)  # seed-major: a deadline cuts whole seeds


@pytest.mark.slow
def test_smoke(tmp_path):
    assert study.main(["--smoke", "--out", str(tmp_path)]) == 0
    blob = json.loads((tmp_path / "study.json").read_text())
    runs = [r for r in blob["runs"] if not r["skipped"]]
    assert len(runs) == len(study.tasks(study.SMOKE))
    assert {r["dataset"] for r in runs} == set(study.DATASETS)
    assert all(r["metrics"]["recon_mse"] is not None for r in runs)
    md = (tmp_path / "study.md").read_text()
    assert "codebook-size sweep" in md and "continuous-phase sweep" in md and "deferred 25%" in md
