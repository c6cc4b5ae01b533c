"""The Ray Data scan (ofa_sdk.distributed) against the single-process Attributor.scan, on a
local 2-CPU Ray cluster and the tiny model."""
import json
import math
import os
import sys
from pathlib import Path

import pytest

from conftest import make_images

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """~20 queries of two kinds (crop size 32), two of them JPEGs (scored against the profiles'
    JPEG variants), a corrupt file and a too-small image; two profiles enrolled in a gallery
    file; the single-process scan as the reference."""
    from PIL import Image
    from ofa_sdk import Attributor
    root = tmp_path_factory.mktemp("dist")
    q = root / "queries"
    make_images(q, 10, 1, size=32, kind="noise")
    make_images(q, 10, 2, size=32, kind="blocky")
    (q / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    make_images(root / "small", 1, 3, size=16)[0].rename(q / "small.png")
    for f, quality in zip(make_images(root / "jpeg", 2, 6, size=32, kind="blocky"), (85, 70)):
        Image.open(f).convert("RGB").save(q / f"q{quality}.jpg", quality=quality)
    gallery = root / "gallery.db"
    att = Attributor(model=tiny_model, backend="torch", gallery=str(gallery), workers=1)
    att.enroll("noise", make_images(root / "sup-noise", 4, 4, size=32, kind="noise"))
    att.enroll("blocky", make_images(root / "sup-blocky", 4, 5, size=32, kind="blocky"))
    ref = {r.source: r.to_dict() for r in att.scan(str(q), progress=False)}
    assert len(ref) == 24
    assert sorted(r["note"] for r in ref.values() if r["note"].startswith("JPEG")) == [
        "JPEG q70: scored against the q75 variants", "JPEG q85: scored against the q90 variants"]
    return {"root": root, "queries": q, "gallery": str(gallery), "model": str(tiny_model),
            "ref": ref}


def _scan(setup, output, **kw):
    from ofa_sdk.distributed import scan_dataset
    return scan_dataset(str(setup["queries"]), str(output), model=setup["model"],
                        gallery=setup["gallery"], backend="torch", batch_size=8,
                        concurrency=1, **kw)


def _rows(folder):
    rows = []
    for f in sorted(Path(folder).iterdir()):
        if f.suffix == ".parquet":
            rows += pq.read_table(f).to_pylist()
        elif f.suffix == ".jsonl":
            rows += [json.loads(ln) for ln in f.read_text().splitlines()]
    return rows


def _check_equal(rows, ref):
    from ofa_sdk.cli import SCAN_FIELDS
    assert sorted(r["source"] for r in rows) == sorted(ref)          # one row each, no dupes
    for r in rows:
        assert list(r) == SCAN_FIELDS
        want = ref[r["source"]]
        scores = json.loads(r["scores"]) if isinstance(r["scores"], str) else r["scores"]
        assert r["label"] == want["label"], r["source"]
        assert r["profile"] == want["profile"]
        assert r["note"] == want["note"]
        assert bool(r["error"]) == bool(want["error"]), (r["source"], r["error"])
        if want["error"]:
            assert r["score"] is None and scores == {}
            continue
        assert r["error"] is None
        assert math.isclose(r["score"], want["score"], abs_tol=1e-5)
        assert math.isclose(r["threshold"], want["threshold"], abs_tol=1e-9)
        assert scores.keys() == want["scores"].keys()
        for k in scores:
            assert abs(scores[k] - want["scores"][k]) <= 1e-5


def test_scan_matches_single_process_and_resumes(cluster, setup, tmp_path):
    out = tmp_path / "results.parquet"
    s = _scan(setup, out)
    assert (s["written"], s["errors"], s["skipped_already_done"]) == (24, 2, 0)
    rows = _rows(out)
    _check_equal(rows, setup["ref"])
    errs = {Path(r["source"]).name: r["error"] for r in rows if r["error"]}
    assert set(errs) == {"corrupt.png", "small.png"}
    assert "smaller than" in errs["small.png"] and "unreadable" in errs["corrupt.png"]
    assert not (out / "_incomplete").exists()

    # a rerun over the same output writes nothing new
    files = sorted(os.listdir(out))
    s = _scan(setup, out)
    assert (s["written"], s["skipped_already_done"], s["files"]) == (0, 24, 0)
    assert sorted(os.listdir(out)) == files

    # partial output: 7 rows in a finished part file, 5 more in a whole file and a torn one
    # left by an interrupted run; the resume keeps those 12 and scans the other 12
    full = pq.read_table(str(out))
    part = tmp_path / "partial.parquet"
    crashed = part / "_incomplete" / "crashed"
    crashed.mkdir(parents=True)
    pq.write_table(full.slice(0, 7), part / "part-old-000000.parquet")
    pq.write_table(full.slice(7, 5), crashed / "part-crashed-000000.parquet")
    pq.write_table(full.slice(12, 6), crashed / "part-crashed-000001.parquet")
    raw = (crashed / "part-crashed-000001.parquet").read_bytes()
    (crashed / "part-crashed-000001.parquet").write_bytes(raw[: len(raw) // 2])   # torn
    s = _scan(setup, part)
    assert (s["salvaged_files"], s["torn_files_dropped"]) == (1, 1)
    assert (s["skipped_already_done"], s["written"]) == (12, 12)
    _check_equal(_rows(part), setup["ref"])
    assert not (part / "_incomplete").exists()


def test_jsonl_output_matches_cli_lines(cluster, setup, tmp_path):
    out = tmp_path / "results.jsonl"
    s = _scan(setup, out)
    assert (s["format"], s["written"], s["errors"]) == ("jsonl", 24, 2)
    rows = _rows(out)
    assert all(isinstance(r["scores"], dict) for r in rows)     # an object, as the CLI writes
    _check_equal(rows, setup["ref"])


def test_bad_arguments(cluster, setup, tmp_path):
    from ofa_sdk.distributed import scan_dataset
    with pytest.raises(ValueError, match="output format"):
        scan_dataset(str(setup["queries"]), str(tmp_path / "results"), model=setup["model"],
                     gallery=setup["gallery"])
    (tmp_path / "one.jsonl").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        scan_dataset(str(setup["queries"]), str(tmp_path / "one.jsonl"), model=setup["model"],
                     gallery=setup["gallery"])


def test_without_ray_a_clear_error(monkeypatch):
    import ofa_sdk.distributed as dist
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"pip install 'ofa-sdk\[ray\]'"):
        dist.scan_dataset("x", "y.parquet")


def test_defaults_match_the_single_process_scan():
    """Options scan_dataset shares with Attributor default to the same values, so leaving one
    out gives the scores Attributor.scan gives (crops: "auto", not one crop)."""
    import inspect
    from ofa_sdk import Attributor
    from ofa_sdk.distributed import scan_dataset
    ours = inspect.signature(scan_dataset).parameters
    theirs = inspect.signature(Attributor).parameters
    shared = sorted(set(ours) & set(theirs) - {"backend", "batch_size"})
    assert {"crops", "small", "threshold", "rule"} <= set(shared)
    for name in shared:
        assert ours[name].default == theirs[name].default, name


def test_run_record_refuses_another_run_and_limits_apply(cluster, setup, tmp_path):
    """The folder's record says what made its rows, as the single-process scan's does; a resume
    with another threshold policy is refused before any work unless allowed; max_bytes turns
    larger inputs into error rows."""
    from ofa_sdk import Attributor
    from ofa_sdk.scan_output import ScanMismatch, run_file
    out = tmp_path / "results.jsonl"
    _scan(setup, out)
    rec = json.loads(run_file(out).read_text())
    want = Attributor(model=setup["model"], backend="torch", gallery=setup["gallery"]).run_info()
    assert rec["runs"][-1] == json.loads(json.dumps(want)) and not rec["mixed"]
    with pytest.raises(ScanMismatch, match="threshold"):
        _scan(setup, out, threshold=0.7)
    s = _scan(setup, out, threshold=0.7, allow_mismatch=True)
    assert s["skipped_already_done"] == 24 and json.loads(run_file(out).read_text())["mixed"]
    small = tmp_path / "small.jsonl"
    s = _scan(setup, small, max_bytes=200)
    rows = _rows(small)
    assert s["errors"] == len(rows) == 24 and all("byte limit" in r["error"] for r in rows
                                                  if "corrupt" not in r["source"]
                                                  and "small.png" not in r["source"])
