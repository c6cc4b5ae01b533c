"""A bounded soak (benchmarks/soak.py): memory stays flat over repeated calls."""
import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_bounded_soak_memory_stays_flat(tmp_path):
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--calls", "300",
                          "--every", "100", "--warmup", "100", "--out", str(out)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["calls"] == 300 and len(report["samples"]) == 4
    assert report["growth_after_warmup_mb"] < 50, report
