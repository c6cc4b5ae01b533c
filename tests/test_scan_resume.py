"""Interrupted scans resume without loss or duplicates: real ``ofa-sdk scan`` processes stopped
by SIGINT, SIGTERM and SIGKILL while stalled in a decode, an engine call or between rows, under
CPU load, then run again on the same output (JSONL and CSV)."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import enrolled_gallery, make_images, wait_for


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


N_IMAGES = 60

# The scan of the CLI, stalled at one point of its data flow once its first rows are through:
# inside an engine call ("engine", the main thread), inside a decode ("prefetch", a worker
# thread the main thread waits on) or between result rows ("rows"). It writes a marker file when
# it stalls and stays there until it is stopped, so the test signals a scan that is certainly
# still running, at that point, whatever the machine's load: no timing assumption. The stall
# wraps the real engine, decoder and scan; nothing stands in for them.
STALLING_SCAN = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from ofa_sdk import cli
    where, marker, after = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    lock, calls = threading.Lock(), [0]
    def stall_after_first():
        with lock:
            calls[0] += 1
            if calls[0] <= after:
                return
        marker.write_text(where)
        threading.Event().wait()            # until the process is stopped
    make = cli._attributor
    def attributor(a):
        att = make(a)
        if where == "engine":
            embed = att.engine.embed
            def stalling_embed(crops):
                stall_after_first()
                return embed(crops)
            att.engine.embed = stalling_embed
        elif where == "prefetch":
            policy = att.policy
            class StallingPolicy:
                def __getattr__(self, name):
                    return getattr(policy, name)
                def __call__(self, item):
                    stall_after_first()
                    return policy(item)
            att.policy = StallingPolicy()
        else:
            scan = att._scan                # the results Attributor.scan writes
            def stalling_scan(*args, **kw):
                for r in scan(*args, **kw):
                    stall_after_first()
                    yield r
            att._scan = stalling_scan
        return att
    cli._attributor = attributor
    sys.exit(cli.main(sys.argv[4:]))
""")


@pytest.fixture(scope="module")
def scan_setup(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scan")
    g = enrolled_gallery(tmp, tiny_model, [("gen-a", "noise", 5), ("gen-b", "blocky", 5)])
    q = tmp / "queries"
    make_images(q, N_IMAGES // 2, 12, kind="noise")
    make_images(q, N_IMAGES // 2 - 1, 13, kind="blocky")
    (q / "broken.png").write_bytes(b"\x89PNG broken")       # an error row is a row too
    return tmp, q, g


def _scan_args(q, out, g, model):
    return ["scan", str(q), "-o", str(out), "--gallery", str(g), "--model", str(model),
            "--backend", "torch", "--no-progress", "--batch-size", "1", "--json"]


def _scan_cmd(q, out, g, model):
    return [sys.executable, "-m", "ofa_sdk.cli", *_scan_args(q, out, g, model)]


def _rows(out):
    if out.suffix == ".csv":
        with open(out, newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in out.read_text().splitlines()]


def _complete_rows(out):
    if not out.exists():
        return 0
    n = out.read_bytes().count(b"\n")
    return n - 1 if out.suffix == ".csv" else n


@pytest.fixture
def busy_cpu():
    """A process that keeps a core busy beside the test: an operator presses Ctrl-C on a
    loaded machine."""
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 600\n"
                            "while time.time() < end: pass"])
    yield hog
    hog.kill()
    hog.wait()


@pytest.mark.parametrize("sig, fmt, where", [
    (signal.SIGINT, "jsonl", "prefetch"), (signal.SIGINT, "csv", "engine"),
    (signal.SIGINT, "jsonl", "rows"), (signal.SIGTERM, "csv", "prefetch"),
    (signal.SIGTERM, "jsonl", "engine"), (signal.SIGKILL, "jsonl", "engine"),
    (signal.SIGKILL, "csv", "prefetch")], ids=lambda v: getattr(v, "name", v))
def test_interrupted_scan_resumes_without_loss_or_duplicates(scan_setup, tiny_model, busy_cpu,
                                                             tmp_path, sig, fmt, where):
    tmp, q, g = scan_setup
    out = tmp_path / f"results.{fmt}"
    marker = tmp_path / "stalled"
    proc = subprocess.Popen([sys.executable, "-c", STALLING_SCAN, where, str(marker), "8",
                             *_scan_args(q, out, g, tiny_model)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (marker.exists() and _complete_rows(out) >= 1) or proc.poll() is not None,
                  timeout=300, what="the scan to stall after its first rows")
        assert proc.poll() is None, ("the scan ended before it could be interrupted",
                                     proc.communicate())
        proc.send_signal(sig)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the scan did not stop on {sig.name} while stalled in {where}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sig != signal.SIGKILL:
        assert proc.returncode == 130 and "Traceback" not in stderr, (proc.returncode, stderr)
        summary = json.loads(stdout)
        assert summary["interrupted"] is True
    else:
        assert proc.returncode == -signal.SIGKILL
    data = out.read_bytes()
    assert data.endswith(b"\n")              # never a torn last line
    first = _rows(out)
    assert 1 <= len(first) < N_IMAGES, len(first)
    assert len({r["source"] for r in first}) == len(first)
    if sig == signal.SIGKILL:
        # a write cut short (full disk, power loss) leaves a torn row: resume must cut it off;
        # the CSV one stops inside a quoted field holding a newline
        torn = (b'{"source": "' + str(q).encode() + b'/zz.png", "label": "unk' if fmt == "jsonl"
                else str(q).encode() + b'/zz.png,unknown,,0.1,0.5,,"a note\nwith a newl')
        out.write_bytes(data + torn)
    res = subprocess.run(_scan_cmd(q, out, g, tiny_model), env=ENV, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr   # 1: the broken file is reported (once)
    summary = json.loads(res.stdout)
    assert summary["skipped_already_done"] == len(first)
    assert summary["written"] == N_IMAGES - len(first)
    assert summary["repaired"]["torn_bytes_cut"] == (len(torn) if sig == signal.SIGKILL else 0)
    rows = _rows(out)
    sources = [r["source"] for r in rows]
    expected = sorted(str(p) for p in q.iterdir())
    assert sorted(sources) == expected       # every source exactly once
    assert rows[: len(first)] == first       # rows written before the interruption are kept
    assert sum(1 for r in rows if r["error"]) == 1
    if fmt == "csv":
        assert out.read_text().startswith(",".join(["source", "label"]))
        assert out.read_text().count("source,label") == 1    # one header
