"""``shrinkscope demo --quick`` end to end (asserts the report's contents, not which arm wins)."""
import argparse
import json

import pytest
import torch

from shrinkscope.reference import demo


@pytest.mark.slow
def test_demo_quick(tmp_path, monkeypatch, capsys):
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    out = tmp_path / "demo"
    args = p.parse_args(["--quick", "--out", str(out), "--no-progress", "--steps", "120", "--prior-steps", "60",
                         "--samples", "300"])
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out recon MSE" in printed and "early" in printed and "deferred" in printed
    assert printed.count("SMOKE RUN") == 2 and "better" not in printed  # says so, names no winner
    assert all(arm in printed for arm in ("l2", "expiry"))
    html = (out / "report.html").read_text()
    for fragment in ("Before / after", "Codebook health during training", "Codebook over held-out latents",
                     "Generated samples", "modes covered", "data:image/png;base64,"):
        assert fragment in html
    assert "src=\"http" not in html  # self-contained
    res = json.loads((out / "results.json").read_text())
    arms = [a["arm"] for a in res["arms"]]
    assert arms[:2] == ["early", "deferred"]
    assert res["arms"][0]["quantize_start"] == 0 and res["arms"][1]["quantize_start"] == 30
    for name in arms:
        blob = torch.load(out / f"{name}.pt", weights_only=True)
        assert blob["format"] == "shrinkscope.reference.tokenizer/1"
        lines = (out / f"{name}.jsonl").read_text().splitlines()
        assert any('"metrics"' in ln for ln in lines)
    assert res["arms"][0]["diversity"]["num_samples"] == 300
    assert res["meta"]["quick"] and all(r["better"] == "" for r in res["table"])
    assert "no winner is named" in html


def test_comparison_rows_pick_winners():
    results = [{"arm": "early", "recon_mse": 0.2, "health": {"metrics": {"spread_ratio": 0.5}}, "diversity": None},
               {"arm": "deferred", "recon_mse": 0.1, "health": {"metrics": {"spread_ratio": 1.1}}, "diversity": None}]
    rows = {r["metric"]: r for r in demo.comparison_rows(results)}
    assert rows["held-out recon MSE"]["better"] == "deferred"
    assert rows["spread_ratio"]["better"] == "deferred"  # closer to 1
    assert "modes covered" not in rows


def test_bad_options(tmp_path, capsys):
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    assert demo.main(p.parse_args(["--out", str(tmp_path), "--defer-fraction", "1.5"])) == 2
    assert "defer-fraction" in capsys.readouterr().err
    assert demo.main(p.parse_args(["--out", str(tmp_path), "--arms", "early,vqgan"])) == 2
    assert "--arms" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert demo.main(p.parse_args(["--out", str(blocker), "--quick"])) == 2
    err = capsys.readouterr().err
    assert "--out" in err and err.count("\n") == 1
    assert blocker.read_text() == "keep me"  # nothing lost


def test_partial_and_full_ties_are_named():
    results = [{"arm": a, "recon_mse": v, "health": {"metrics": {}}, "diversity": None}
               for a, v in (("early", 0.2), ("deferred", 0.1), ("deferred-auto", 0.1))]
    assert demo.comparison_rows(results)[0]["better"] == "deferred = deferred-auto"
    for r in results:
        r["recon_mse"] = 0.3
    assert demo.comparison_rows(results)[0]["better"] == "tie"
