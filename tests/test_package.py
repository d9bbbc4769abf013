"""Package-level checks: light import, public exports, the README example runs."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = "import sys, shrinkscope; print('matplotlib' in sys.modules, 'umap' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_exports_are_functions_even_after_submodule_imports():
    code = ("import shrinkscope.kmeans, shrinkscope.watch, shrinkscope.defer, shrinkscope.analyze, "
            "shrinkscope.reference.quantizer, shrinkscope as s, types; "
            "print(all(isinstance(f, types.FunctionType) for f in (s.kmeans, s.watch, s.defer, s.analyze, "
            "s.compare, s.unwrap, s.codebook_health)), s.metrics.METRIC_KEYS[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "num_codes"]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README must hold a python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert "health" in namespace
    assert namespace["health"].spread_ratio < 0.2


def test_analyze_never_imports_the_demo_package():
    code = ("import sys, torch, shrinkscope; "
            "r = shrinkscope.analyze({'format': 'shrinkscope.reference.tokenizer/1', "
            "'model': {'quantizer.embed': torch.randn(16, 4), 'quantizer.cluster_size': torch.ones(16)}, "
            "'encoder_latents': torch.randn(200, 4)}, progress=False); "
            "print(r.latents_source, 'shrinkscope.reference' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["reference", "model", "False"]


def test_each_module_exports_one_public_list():
    import importlib

    for name in ("analyze", "checkpoint", "cli", "defer", "discovery", "families", "formats", "kmeans", "output",
                 "sinks", "stream", "unpickle", "watch"):
        module = importlib.import_module(f"shrinkscope.{name}")
        assert all(hasattr(module, n) for n in module.__all__), name
    assert not {"FAMILIES", "family_of"} & set(importlib.import_module("shrinkscope.defer").__all__)
