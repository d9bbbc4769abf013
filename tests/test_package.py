"""Package-level checks: light import, lazy exports, the README example runs."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = "import sys, shrinkscope; print('matplotlib' in sys.modules, 'umap' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_lazy_exports_resolve():
    import shrinkscope

    assert callable(shrinkscope.codebook_health)
    assert callable(shrinkscope.kmeans)
    assert shrinkscope.metrics.METRIC_KEYS[0] == "num_codes"


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README must hold a python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert "health" in namespace
    assert namespace["health"].spread_ratio < 0.2
