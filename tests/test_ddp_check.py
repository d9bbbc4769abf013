"""The multi-process check of bench/ddp_check.py runs under torchrun with gloo (2 CPU processes).

On GPUs the same script runs with NCCL (docs/performance.md); here it guards the script against rot and
checks the three DDP guarantees on CPU: merged counts = sum over ranks, identical codebooks after the
deferred switch, and no hang.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ddp_check.py"


@pytest.mark.slow
def test_ddp_check_gloo(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), "--device", "cpu", "--steps", "40", "--small", "--num-codes", "64", "--batch-size", "32",
           "--every", "20", "--timing-blocks", "2", "--timing-steps", "4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["merged_counts_equal_sum_over_ranks"] is True
    assert summary["codebook_max_abs_diff_across_ranks"] == 0.0
    assert summary["switched_at_step"] is not None
    assert (tmp_path / "watch.jsonl").exists()
