"""benchmarks/gpu_check.sh --dry-run: the prepared GPU check runs here on the CPU (toy sizes,
the Triton interpreter), every step in its time box, and writes the JSON and summary a GPU run
would. What it checks is the script, not the GPU: no figure of a dry run means anything."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BUDGET_S = 8 * 60


def test_the_script_reads_no_index_and_its_time_boxes_fit_eight_minutes():
    text = SCRIPT.read_text()
    assert "export PIP_NO_INDEX=1" in text and "venv" not in text
    code = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    assert not [l for l in code if re.search(r"pip\b.*\binstall\b", l)]     # nothing installed
    assert any('setup.py build_ext --inplace' in l for l in code)
    boxes = {}
    for name, secs in re.findall(r"^\s*step (\w+) (\d+) ", text, re.M):
        boxes[name] = max(boxes.get(name, 0), int(secs))      # dry and real branches alike
    assert set(boxes) == {"env", "install", "tests", "parity", "kernels", "e2e", "train"}
    assert sum(boxes.values()) <= BUDGET_S


def test_dry_run_writes_every_step_and_the_summary(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("triton")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.pop("OFA_SDK_CACHE", None)                 # the script keeps its cache under OUT
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["env", "install", "tests", "parity", "kernels", "e2e", "train"]
    bad = {k: (s["rc"], (out / f"{k}.log").read_text()[-1500:]) for k, s in steps.items() if s["rc"]}
    assert not bad, bad
    assert report["time_boxes_s"] <= BUDGET_S
    assert report["tests"]["collected"] > 20           # the GPU tests import and collect here
    parity = report["parity"]["engines"]
    assert parity["onnxruntime cpu"]["passed"] and parity["onnxruntime cpu"]["parity_record_passed"]
    assert parity["torch cpu (PyTorch reference)"]["fingerprint_max_abs"] < 1e-5
    assert list((out / "cache" / "verified").glob("onnxruntime-*.json"))   # auto may pick it
    kernels = report["kernel_vs_best_torch"]
    assert {r["case"].split()[0] for r in kernels} == {"spectrum", "mokconv", "gallery"}
    assert all(r["speedup"] > 0 for r in kernels)
    assert any(k.startswith("onnxruntime cpu batch") for k in report["e2e"]["rows"])
    assert report["train"]["runs"]["cpu"]["steps_per_s"] > 0
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "## Parity" in summary and "## Stage-2 training" in summary
