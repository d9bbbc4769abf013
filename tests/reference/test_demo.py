"""``shrinkscope demo`` end to end (asserts the report's contents, not which arm wins), its output folder, its
determinism across worker counts and seeds, and its table and progress helpers."""
import argparse
import json
import os
import queue

import pytest
import torch

from shrinkscope.reference import demo, phases
from shrinkscope.reference.demo_table import decided_by, seed_table, verdict_lines

TINY = ["--quick", "--no-progress", "--arms", "early,deferred", "--steps", "40", "--prior-steps", "20",
        "--samples", "100"]


def _args(*argv):
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def _stable(blob):
    """results.json without the run-time measurements (the only thing allowed to differ between runs)."""
    blob = json.loads(json.dumps(blob))
    blob["meta"].pop("timing", None)
    for arm in blob["arms"]:
        for key in ("timing", "seconds", "tokenizer_seconds"):
            arm.pop(key, None)
    return blob


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(_args("--quick", "--out", out, "--no-progress", "--steps", 120, "--prior-steps", 60,
                           "--samples", 300)) == 0
    printed = capsys.readouterr().out
    assert "held-out recon MSE" in printed and "early" in printed and "deferred" in printed
    assert printed.count("SMOKE RUN") == 2 and "better" not in printed  # says so, names no winner
    assert all(arm in printed for arm in ("l2", "expiry"))
    assert "verdict decided by" in printed and "verdicts (what decides them):" in printed
    html = (out / "report.html").read_text()
    for fragment in ("Verdicts", "Decided by", "Before / after", "Codebook health during training",
                     "Codebook over held-out latents", "Generated samples", "Prior training", "modes covered",
                     "verdict decided by", "data:image/png;base64,", "Run time and files", "Made by shrinkscope"):
        assert fragment in html, fragment
    assert "src=\"http" not in html and "src='http" not in html and "<script" not in html  # self-contained
    assert html.count("class='card ") == 4  # one verdict card per arm, in the shared layout
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
    for arm in res["arms"]:  # every phase timed, in CPU and wall seconds
        assert {"tokenizer", "prior", "evaluate", "save", "evaluate/health", "evaluate/sample"} <= set(arm["timing"])
        assert all(p["cpu_s"] >= 0 and p["wall_s"] >= 0 for p in arm["timing"].values())
        assert arm["timing"]["tokenizer"]["cpu_s"] > 0
    assert res["meta"]["timing"]["cpu_s"] > 0 and "report" in res["meta"]["timing"]["main"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".shrinkscope-")]  # no temp folder left


@pytest.mark.slow
def test_same_seed_same_json_whatever_the_workers(tmp_path, capsys):
    """Seeds 0 and 1 side by side in two worker processes, then seed 1 alone in this process: seed 1's
    results.json is the same (timings aside); seed 0's table differs from seed 1's."""
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert demo.main(_args(*TINY, "--seeds", "0,1", "--workers", 2, "--out", both)) == 0
    assert demo.main(_args(*TINY, "--seed", 1, "--workers", 1, "--out", alone)) == 0
    printed = capsys.readouterr().out
    assert "mean ± std over seeds 0, 1" in printed
    one = json.loads((alone / "results.json").read_text())
    assert _stable(json.loads((both / "seed-1" / "results.json").read_text())) == _stable(one)
    zero = json.loads((both / "seed-0" / "results.json").read_text())
    assert zero["table"] != one["table"]
    md = (both / "seeds.md").read_text()
    assert "±" in md and "| verdict |" in md and "early" in md
    meta = json.loads((both / "seeds.json").read_text())
    assert meta["seeds"] == [0, 1] and meta["timing"]["cpu_s"] > 0
    assert (both / "seed-0" / "report.html").exists() and (both / "seed-1" / "early.pt").exists()


def test_out_refuses_a_non_empty_folder_and_force_keeps_other_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert demo.main(_args(*TINY, "--out", out)) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and err.count("\n") == 1
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"

    def fake_arm(name, settings, data, preset, cfg, out, **kw):  # the pipeline without the training
        (out / f"{name}.jsonl").write_text("")
        (out / f"{name}.pt").write_bytes(b"x")
        if name == "deferred":
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(demo, "run_arm", fake_arm)
    with pytest.raises(KeyboardInterrupt):  # a run cut short leaves the folder as it was, and no temp folder
        demo.main(_args(*TINY, "--workers", 1, "--out", out, "--force"))
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".shrinkscope-")]
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        demo.main(_args(*TINY, "--workers", 1, "--out", new))
    assert not new.exists()


@pytest.mark.slow
def test_force_writes_into_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert demo.main(_args(*TINY, "--arms", "early", "--out", out, "--force")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert {"report.html", "results.json", "early.pt", "early.jsonl"} <= set(os.listdir(out))


def test_comparison_rows_pick_winners():
    results = [{"arm": "early", "recon_mse": 0.2, "health": {"metrics": {"spread_ratio": 0.5}, "warnings": []},
                "diversity": None},
               {"arm": "deferred", "recon_mse": 0.1, "health": {"metrics": {"spread_ratio": 1.1}, "warnings": []},
                "diversity": None}]
    rows = {r["metric"]: r for r in demo.comparison_rows(results)}
    assert rows["held-out recon MSE"]["better"] == "deferred"
    assert rows["spread_ratio"]["better"] == "deferred"  # closer to 1
    assert "modes covered" not in rows


def _reason(metric, value, threshold, direction):
    return {"code": "x", "metric": metric, "value": value, "threshold": threshold, "direction": direction,
            "reference": None, "reference_name": "k-means, same K, on these latents"}


def test_decided_by_names_the_rules_that_fired_or_the_closest_call():
    shrunk = {"status": "shrunk", "reasons": [_reason("excess_distortion", 2.5, 1.8557, "max"),
                                              _reason("spread_vs_kmeans", 0.5, 0.8167, "min")]}
    assert decided_by(shrunk) == "excess_distortion, spread_vs_kmeans"
    healthy = {"status": "healthy", "reasons": [_reason("spread_vs_kmeans", 0.9, 0.8167, "min")]}
    assert decided_by(healthy) == "none fired"
    assert decided_by({}) is None
    rows = demo.comparison_rows([{"arm": "early", "recon_mse": 0.1, "diversity": None,
                                  "health": {"metrics": {}, "verdict": shrunk,
                                             "warnings": [{"code": "excess_distortion", "message": "m"}]}}])
    by = {r["metric"]: r["values"][0] for r in rows}
    assert by["verdict"] == "shrunk" and by["verdict decided by"] == "excess_distortion, spread_vs_kmeans"
    assert by["warnings"] == "excess_distortion"
    assert "shrinkage warning" not in by  # the old rows that disagreed with the verdict are gone
    res = [{"arm": "early", "health": {"verdict": {**shrunk, "summary": "Shrunk (evidence: codes): x."}}}]
    assert verdict_lines(res) == ["  early: Shrunk (evidence: codes): x."]


def test_seed_table_mean_std_and_text_rows(tmp_path):
    for s, (v, word, better) in enumerate([(1.0, "shrunk", "early"), (3.0, "shrunk", "deferred")]):
        d = tmp_path / f"s{s}"
        d.mkdir()
        table = [{"section": "a", "metric": "verdict", "direction": "", "values": [word, "healthy"], "better": ""},
                 {"section": "a", "metric": "mse", "direction": "lower", "values": [v, 2.0], "better": better}]
        (d / "results.json").write_text(json.dumps({"arms": [{"arm": "early"}, {"arm": "deferred"}],
                                                    "table": table}))
    md = seed_table([tmp_path / "s0", tmp_path / "s1"])
    assert "| a | verdict |  | shrunk | healthy |  |" in md  # every run agrees: shown once
    assert "| a | mse | lower | 2 ± 1.4 | 2 ± 0 | early 1, deferred 1 |" in md


def test_bad_options(tmp_path, capsys):
    assert demo.main(_args("--out", tmp_path / "a", "--defer-fraction", "1.5")) == 2
    assert "defer-fraction" in capsys.readouterr().err
    assert demo.main(_args("--out", tmp_path / "a", "--arms", "early,vqgan")) == 2
    assert "--arms" in capsys.readouterr().err
    assert demo.main(_args("--out", tmp_path / "a", "--seeds", "0,x")) == 2
    assert "--seeds" in capsys.readouterr().err
    assert demo.main(_args("--out", tmp_path / "a", "--seeds", "1,1")) == 2
    assert demo.main(_args("--out", tmp_path / "a", "--workers", "0")) == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    capsys.readouterr()
    assert demo.main(_args("--out", blocker, "--quick")) == 2
    err = capsys.readouterr().err
    assert "--out" in err and err.count("\n") == 1
    assert blocker.read_text() == "keep me"  # nothing lost
    assert not (tmp_path / "a").exists()


def test_partial_and_full_ties_are_named():
    results = [{"arm": a, "recon_mse": v, "health": {"metrics": {}, "warnings": []}, "diversity": None}
               for a, v in (("early", 0.2), ("deferred", 0.1), ("deferred-auto", 0.1))]
    rows = {r["metric"]: r for r in demo.comparison_rows(results)}
    assert rows["held-out recon MSE"]["better"] == "deferred = deferred-auto"
    for r in results:
        r["recon_mse"] = 0.3
    rows = {r["metric"]: r for r in demo.comparison_rows(results)}
    assert rows["held-out recon MSE"]["better"] == "tie"


def test_preset_option():
    assert demo._preset(_args("--preset", "default", "--device", "cuda")) == demo.PRESETS["default"]
    assert demo._preset(_args("--device", "cuda")) == demo.PRESETS["cuda"]
    assert demo._preset(_args("--quick")).steps == demo.PRESETS["quick"].steps
    assert demo._preset(_args("--steps", "7")).steps == 7


def test_phase_clock_and_progress_through_a_queue():
    clock = phases.PhaseClock()
    with clock.phase("work"):
        sum(i * i for i in range(200_000))
    with clock.phase("work"):
        pass
    t = clock.as_dict()["work"]
    assert t["cpu_s"] > 0 and t["wall_s"] > 0
    q = queue.Queue()
    p = phases.Progress(q, "early", min_send=1.0)
    p.phase("tokenizer")
    for _ in range(25):
        p.advance(0.1)  # held back until a whole unit has gathered
    p.flush()
    msgs = []
    while not q.empty():
        msgs.append(q.get())
    assert msgs[0] == ("early", 0.0, "tokenizer")
    assert sum(m[1] for m in msgs) == pytest.approx(2.5) and len(msgs) == 4

    class Bar:
        n, postfix = 0.0, ""

        def update(self, u):
            self.n += u

        def set_postfix_str(self, s, refresh=False):
            self.postfix = s

    bar, seen = Bar(), {}
    for m in msgs + [("deferred", 0.0, "prior"), ("early", 0.0, "done")]:
        phases.apply(bar, seen, m)
    assert bar.n == pytest.approx(2.5) and bar.postfix == "deferred: prior"
    full = phases.work_units(1000, 500, num_samples=5000)
    assert full > phases.work_units(1000, 500, num_samples=100) > phases.work_units(100, 50, num_samples=100)
