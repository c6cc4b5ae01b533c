"""Scan output as a library (ofa_sdk.scan_output): ``Attributor.scan(..., output=PATH)`` writes
JSONL, CSV or Parquet with the CLI's guarantees (one row per input, resume, repair, a clean stop),
and the Ray scan formats its rows with the same functions."""
import csv
import json

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.scan_output import (ScanInterrupted, arrow_table, jsonl_line, jsonl_lines,
                                 write_scan)

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scanlib")
    att = Attributor(model=tiny_model, backend="torch", workers=1)
    att.enroll("gen-a", make_images(tmp / "a", 3, 1, kind="noise"))
    q = tmp / "q"
    make_images(q, 4, 2, kind="noise")
    make_images(q, 3, 3, kind="blocky")
    (q / "broken.png").write_bytes(b"\x89PNG broken")
    ref = {r.source: r.to_dict() for r in att.scan(q, progress=False)}
    assert len(ref) == 8
    return att, q, ref


def read_rows(path):
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def drop_last(path, n):
    """What an interrupted earlier run leaves: the file without its last ``n`` rows."""
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        pq.write_table(t.slice(0, t.num_rows - n), path)
    else:
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-n]))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_library_scan_writes_one_row_per_input_and_resumes(setup, tmp_path, fmt):
    att, q, ref = setup
    out = tmp_path / f"results.{fmt}"
    s = att.scan(q, progress=False, output=out)
    assert (s.written, s.errors, s.skipped_already_done, s.interrupted) == (8, 1, 0, False)
    rows = read_rows(out)
    assert sorted(r["source"] for r in rows) == sorted(ref)
    for r in rows:
        want = ref[r["source"]]
        assert r["label"] == want["label"]
        if want["score"] is not None:
            assert float(r["score"]) == pytest.approx(want["score"], abs=1e-6)
        assert (r["scores"] if fmt == "jsonl" else json.loads(r["scores"])) == want["scores"]
    drop_last(out, 3)
    s = att.scan(q, progress=False, output=out)
    assert (s.written, s.skipped_already_done) == (3, 5)
    again = read_rows(out)
    assert sorted(r["source"] for r in again) == sorted(ref)
    assert again[:5] == rows[:5]
    s = att.scan(q, progress=False, output=out)          # nothing left to do
    assert (s.written, s.skipped_already_done) == (0, 8) and read_rows(out) == again


def test_parquet_partial_file_of_a_killed_run_is_dropped_and_reported(setup, tmp_path):
    att, q, ref = setup
    out = tmp_path / "r.parquet"
    att.scan(q, progress=False, output=out)
    drop_last(out, 2)
    partial = tmp_path / ".r.parquet.partial"          # a run killed before it closed
    partial.write_bytes(b"PAR1 torn")
    s = att.scan(q, progress=False, output=out)
    assert s.repaired["torn_bytes_cut"] == 9 and s.written == 2 and not partial.exists()
    assert sorted(r["source"] for r in read_rows(out)) == sorted(ref)


def test_a_file_that_is_not_a_scan_output_is_refused_by_name(setup, tmp_path):
    att, q, _ = setup
    bad = tmp_path / "notes.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="notes.parquet"):
        att.scan(q, progress=False, output=bad)
    assert bad.read_bytes() == b"not parquet at all"
    other = tmp_path / "other.csv"
    other.write_text("name,value\nx,1\n")
    with pytest.raises(ValueError, match="other.csv"):
        att.scan(q, progress=False, output=other)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_interrupted_library_scan_keeps_its_rows_and_raises_with_the_summary(setup, tmp_path,
                                                                             monkeypatch, fmt):
    att, q, ref = setup
    out = tmp_path / f"r.{fmt}"
    scan = att._scan

    def interrupted(*args, **kw):
        for i, r in enumerate(scan(*args, **kw)):
            if i == 3:
                raise KeyboardInterrupt
            yield r
    monkeypatch.setattr(att, "_scan", interrupted)
    with pytest.raises(ScanInterrupted) as e:
        att.scan(q, progress=False, output=out)
    assert isinstance(e.value, KeyboardInterrupt)
    assert e.value.summary.interrupted and e.value.summary.written == 3
    assert len(read_rows(out)) == 3
    monkeypatch.undo()
    s = att.scan(q, progress=False, output=out)
    assert (s.written, s.skipped_already_done) == (5, 3)
    assert sorted(r["source"] for r in read_rows(out)) == sorted(ref)


def test_write_scan_takes_any_scan_and_skips_what_is_done(setup, tmp_path):
    att, q, ref = setup
    out = tmp_path / "r.jsonl"
    seen = []

    def scan(done):
        seen.append(set(done))
        return att.scan(q, progress=False, skip=done)
    write_scan(out, scan)
    drop_last(out, 1)
    write_scan(out, scan)
    assert seen[0] == set() and len(seen[1]) == 7 and seen[1] < set(ref)


def test_ray_rows_are_the_single_process_rows():
    """The Ray scan's Parquet and JSONL rows come from arrow_table / jsonl_lines: the same
    escaping and the same JSONL lines as the single-process scan."""
    row = {"source": "/x/caf\udce9\\n.png", "label": "unknown", "profile": None,
           "score": 0.25, "threshold": float("nan"), "typicality": None, "error": None,
           "note": "bad \udcff", "scores": {"a": 0.25}, "provenance": {}}
    t = arrow_table([row])
    assert t.column("source").to_pylist() == ["/x/caf\\xe9\\\\n.png"]
    assert t.column("threshold").to_pylist() == [None]
    assert json.loads(t.column("scores")[0].as_py()) == {"a": 0.25}
    assert jsonl_lines(t) == jsonl_line(row)
    assert np.isnan(row["threshold"])                 # the caller's row is left as it was
