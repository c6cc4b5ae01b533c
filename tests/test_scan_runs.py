"""Self-describing scan outputs (issue 32): what made the rows is recorded beside them, resume
refuses another model or gallery unless told, files match by resolved path from any working
directory, and error rows can be retried (library-level scans, JSONL, CSV and Parquet)."""
import json
from pathlib import Path

import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.scan_output import ScanMismatch, read_rows, run_file
from ofa_sdk.testing import write_tiny_model

FORMATS = ["jsonl", "csv", pytest.param("parquet", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is None, reason="needs pyarrow"))]


@pytest.fixture
def setup(tiny_model, tmp_path):
    gal = tmp_path / "g.db"
    att = Attributor(model=tiny_model, gallery=gal, crops=1, backend="torch")
    att.enroll("gen-a", make_images(tmp_path / "support", 4, 0))
    make_images(tmp_path / "data" / "incoming", 5, 1)
    return att, tmp_path


@pytest.mark.parametrize("fmt", FORMATS)
def test_resumed_from_another_directory_writes_no_row_twice(setup, fmt, monkeypatch):
    att, tmp = setup
    out = tmp / f"out.{fmt}"
    monkeypatch.chdir(tmp / "data")
    first = att.scan("incoming", output=out, progress=False)
    assert first.written == 5
    monkeypatch.chdir(tmp)                       # the same folder, another relative path
    again = att.scan("data/incoming", output=out, progress=False)
    assert again.written == 0 and again.skipped_already_done == 5
    rows = list(read_rows(out))
    assert len(rows) == 5 and all(Path(r["source"]).is_absolute() for r in rows)
    assert len({r["source"] for r in rows}) == 5
    # a symlinked route to the same files is the same files
    (tmp / "link").symlink_to(tmp / "data" / "incoming")
    assert att.scan(tmp / "link", output=out, progress=False).written == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_run_is_recorded_and_another_model_or_gallery_is_refused(setup, fmt, tmp_path):
    att, tmp = setup
    out = tmp / f"out.{fmt}"
    att.scan(tmp / "data" / "incoming", output=out, progress=False)
    rec = json.loads(run_file(out).read_text())
    run = rec["runs"][0]
    assert not rec["mixed"] and run["model_id"] == att.model_id and run["rule"] == att.rule.name
    assert run["threshold"] == "profile" and run["gallery_digest"] == att.gallery.digest()
    other = Attributor(model=write_tiny_model(tmp_path / "other.safetensors", seed=7),
                       gallery=tmp / "g2.db", crops=1, backend="torch")
    other.enroll("gen-a", make_images(tmp / "support", 4, 0))
    assert other.model_id != att.model_id
    make_images(tmp / "data" / "incoming", 7, 1)          # two new files to scan
    with pytest.raises(ScanMismatch, match="model_id"):
        other.scan(tmp / "data" / "incoming", output=out, progress=False)
    assert len(list(read_rows(out))) == 5                  # nothing written
    att.enroll("gen-b", make_images(tmp / "b", 3, 2))      # the same model, another gallery
    with pytest.raises(ScanMismatch, match="gallery_digest"):
        att.scan(tmp / "data" / "incoming", output=out, progress=False)
    with pytest.raises(ScanMismatch, match="threshold"):
        att.scan(tmp / "data" / "incoming", threshold=0.5, output=out, progress=False)
    s = att.scan(tmp / "data" / "incoming", output=out, progress=False, allow_mismatch=True)
    assert s.written == 2
    rec = json.loads(run_file(out).read_text())
    assert rec["mixed"] and len(rec["runs"]) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_retry_errors_rescans_the_files_of_error_rows(setup, fmt):
    att, tmp = setup
    out = tmp / f"out.{fmt}"
    bad = tmp / "data" / "incoming" / "late.png"
    bad.write_bytes(b"not yet an image")
    assert att.scan(tmp / "data" / "incoming", output=out, progress=False).errors == 1
    bad.write_bytes(Path(make_images(tmp / "fixed", 1, 9)[0]).read_bytes())   # fixed now
    assert att.scan(tmp / "data" / "incoming", output=out, progress=False).written == 0
    s = att.scan(tmp / "data" / "incoming", output=out, progress=False, retry_errors=True)
    assert s.written == 1 and s.errors == 0 and s.repaired["error_rows_retried"] == 1
    rows = list(read_rows(out))
    assert len(rows) == 6 and not any(r["error"] for r in rows)
    assert sum(r["source"] == str(bad) for r in rows) == 1


def test_another_ambiguity_margin_is_refused_and_an_older_record_means_none(setup):
    from ofa_sdk.decision import DEFAULT_MARGIN
    att, tmp = setup
    out = tmp / "out.jsonl"
    att.scan(tmp / "data" / "incoming", output=out, progress=False)
    run = json.loads(run_file(out).read_text())["runs"][0]
    assert run["ambiguity_margin"] == DEFAULT_MARGIN > 0 and run["choose_head"] is None
    wary = Attributor(model=att.bundle, gallery=att.gallery, crops=1, backend="torch",
                      ambiguity_margin=0.2)
    make_images(tmp / "data" / "incoming", 6, 1)
    with pytest.raises(ScanMismatch, match="ambiguity_margin"):
        wary.scan(tmp / "data" / "incoming", output=out, progress=False)
    rec = json.loads(run_file(out).read_text())    # a record from before the margin existed
    del rec["runs"][0]["ambiguity_margin"]
    run_file(out).write_text(json.dumps(rec))
    with pytest.raises(ScanMismatch, match="ambiguity_margin 0.0 there"):   # no margin then
        att.scan(tmp / "data" / "incoming", output=out, progress=False)
    none = Attributor(model=att.bundle, gallery=att.gallery, crops=1, backend="torch",
                      ambiguity_margin=0)
    assert none.scan(tmp / "data" / "incoming", output=out, progress=False).written == 1
