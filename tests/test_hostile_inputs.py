"""Hostile production inputs, round two: special files and oversized files in a scan, CSV cells
a spreadsheet would run, file names that are not UTF-8, read-only / locked / corrupt galleries,
hostile model headers, and damaged scan outputs on resume (issue 26)."""
import csv
import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import enrolled_gallery, make_images, refused_model_files

from ofa_sdk import cli
from ofa_sdk import gallery as gmod
from ofa_sdk import images as imio
from ofa_sdk.gallery import Gallery, GalleryError, Profile

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def gallery_setup(tiny_model, tmp_path_factory):
    """A gallery with two profiles whose names a spreadsheet would run as formulas."""
    tmp = tmp_path_factory.mktemp("hostile")
    return tmp, enrolled_gallery(tmp, tiny_model, [("=HYPERLINK(1)", "noise", 4),
                                                   ("@gen-b", "blocky", 4)])


@pytest.fixture(scope="module")
def png_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("png")
    make_images(d, 1, 3)
    return next(d.iterdir()).read_bytes()


def _cli(args, g, model, capsys):
    rc = cli.main(args + ["--gallery", str(g), "--model", str(model), "--backend", "torch"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _scan(src, out, g, model, capsys, *extra):
    rc, stdout, err = _cli(["scan", str(src), "-o", str(out), "--no-progress", "--json",
                            *extra], g, model, capsys)
    return rc, (json.loads(stdout) if stdout.strip() else None), err


def _strict_text(v):
    """Every string in a parsed JSON value is valid Unicode text (no lone surrogate)."""
    if isinstance(v, str):
        v.encode("utf-8")
    elif isinstance(v, dict):
        for k, x in v.items():
            _strict_text(k)
            _strict_text(x)
    elif isinstance(v, list):
        for x in v:
            _strict_text(x)


def _no_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def _strict_rows(out: Path):
    """The rows of a scan output, read as strictly as other languages read them."""
    text = out.read_bytes().decode("utf-8")             # strict UTF-8
    if out.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline=""), strict=True))
        for r in rows:
            for k in ("scores", "provenance"):
                _strict_text(json.loads(r[k], parse_constant=_no_constant))
        return rows
    rows = [json.loads(line, parse_constant=_no_constant) for line in text.splitlines()]
    for r in rows:
        _strict_text(r)
    return rows


def _source(row, fmt):
    from ofa_sdk.scan_output import unescape_name
    s = row["source"]
    if fmt == "csv" and s.startswith("'"):
        s = s[1:]
    return unescape_name(s)


# ------------------------------------------------------------------------ special files ------
def _special_folder(tmp_path, png):
    d = tmp_path / "special"
    d.mkdir()
    (d / "good.png").write_bytes(png)
    os.mkfifo(d / "pipe.png")
    os.mkfifo(tmp_path / "elsewhere-fifo")
    (d / "fifo-link.png").symlink_to(tmp_path / "elsewhere-fifo")
    (d / "zero.png").symlink_to("/dev/zero")
    (d / "random.png").symlink_to("/dev/urandom")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    return d, sock


def test_scan_never_reads_pipes_devices_or_sockets_and_lists_them(tiny_model, gallery_setup,
                                                                   tmp_path, png_bytes):
    d, sock = _special_folder(tmp_path, png_bytes)
    try:
        assert sorted(p.name for p in imio.list_images(d)) == [
            "fifo-link.png", "good.png", "pipe.png", "random.png", "sock.png", "zero.png"]
        out = tmp_path / "special.jsonl"
        # a child process: a read that blocks or grows without end must fail the test, not hang
        # it or eat the machine's memory
        res = subprocess.run([sys.executable, "-m", "ofa_sdk.cli", "scan", str(d), "-o", str(out),
                              "--gallery", str(gallery_setup[1]), "--model", str(tiny_model),
                              "--backend", "torch", "--no-progress", "--json"],
                             env=ENV, capture_output=True, text=True, timeout=300,
                             preexec_fn=lambda: __import__("resource").setrlimit(
                                 __import__("resource").RLIMIT_AS, (8 << 30, 8 << 30)))
    finally:
        sock.close()
    assert res.returncode == 1, res.stderr
    rows = {Path(r["source"]).name: r for r in _strict_rows(out)}
    assert sorted(rows) == ["fifo-link.png", "good.png", "pipe.png", "random.png", "sock.png",
                            "zero.png"]
    assert rows["good.png"]["error"] is None
    assert "named pipe" in rows["pipe.png"]["error"]
    assert "named pipe" in rows["fifo-link.png"]["error"]
    assert "character device" in rows["zero.png"]["error"]
    assert "character device" in rows["random.png"]["error"]
    assert "socket" in rows["sock.png"]["error"]
    assert all("not read" in r["error"] for n, r in rows.items() if n != "good.png")


def test_reading_a_pipe_returns_at_once(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "p.png")
    got = {}

    def read():
        for name in ("p.png", "link.png"):
            got[name] = imio.prepare(tmp_path / name, 32)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading a named pipe blocked"
    assert all(isinstance(r, imio.ImageError) and "named pipe" in r.reason for r in got.values())


def test_max_bytes_refuses_large_files_before_reading(tiny_model, gallery_setup, tmp_path,
                                                      png_bytes, capsys):
    from ofa_sdk import Attributor
    d = tmp_path / "sizes"
    d.mkdir()
    (d / "small.png").write_bytes(png_bytes)
    (d / "large.png").write_bytes(png_bytes + b"\0" * 4096)     # decodes, but over the cap
    cap = len(png_bytes) + 100
    att = Attributor(model=tiny_model, backend="torch", max_bytes=cap)
    assert att.policy.max_bytes == cap
    small, large = att.embed_stream([d / "small.png", d / "large.png"])
    assert small.ok
    assert not large.ok and f"over the {cap} byte limit (max_bytes)" in large.error
    assert Attributor(model=tiny_model, backend="torch").policy.max_bytes == imio.MAX_BYTES
    with pytest.raises(ValueError, match="max_bytes"):
        Attributor(model=tiny_model, backend="torch", max_bytes=0)
    out = tmp_path / "sizes.jsonl"
    rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys, "--max-bytes", str(cap))
    assert rc == 1 and summary["errors"] == 1, err
    rows = {Path(r["source"]).name: r for r in _strict_rows(out)}
    assert rows["small.png"]["error"] is None and "max_bytes" in rows["large.png"]["error"]


# ---------------------------------------------------------------------- CSV injection --------
NASTY = ["=1+1.png", "+cmd.png", "-2.png", "@SUM(A1).png", "\tTAB.png", "\rCR.png",
         "'quoted.png", "plain.png"]


def test_csv_cells_are_neutralised_and_jsonl_keeps_raw_values(tiny_model, gallery_setup,
                                                              tmp_path, png_bytes, capsys,
                                                              monkeypatch):
    d = tmp_path / "nasty"
    d.mkdir()
    for n in NASTY:
        (d / n).write_bytes(png_bytes)
    monkeypatch.chdir(d)            # scan "."; rows name the files by absolute path
    g = gallery_setup[1]
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"nasty.{fmt}"
        rc, summary, err = _scan(".", out, g, tiny_model, capsys, "--threshold", "0")
        assert rc == 0 and summary["written"] == len(NASTY), err
        rows = _strict_rows(out)
        assert sorted(_source(r, fmt) for r in rows) == sorted(os.path.join(os.getcwd(), n)
                                                                for n in NASTY)
        labels = {r["label"] for r in rows}
        if fmt == "csv":
            with open(out, newline="") as f:
                for rec in csv.reader(f):
                    assert not any(c[:1] in DANGEROUS for c in rec), rec
            assert labels <= {"'=HYPERLINK(1)", "'@gen-b"}, labels
        else:
            assert labels <= {"=HYPERLINK(1)", "@gen-b"}, labels
            assert {os.path.basename(r["source"]) for r in rows} == set(NASTY)
        rc, summary, err = _scan(".", out, g, tiny_model, capsys, "--threshold", "0")
        assert summary["written"] == 0 and summary["skipped_already_done"] == len(NASTY), err


# -------------------------------------------------------------------- non-UTF-8 names -------
RAW_NAMES = [b"\xff\xfe.png", b"caf\xe9.png", b"back\\slash.png", b"\\xff.png", b"ok.png",
             b"new\nline.png"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_names_that_are_not_utf8_are_escaped_reversibly(tiny_model, gallery_setup, tmp_path,
                                                        png_bytes, capsys, fmt):
    d = tmp_path / "raw"
    d.mkdir()
    for n in RAW_NAMES:
        with open(os.path.join(os.fsencode(d), n), "wb") as f:
            f.write(png_bytes)
    out = tmp_path / f"raw.{fmt}"
    rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
    assert rc == 0 and summary["written"] == len(RAW_NAMES), err
    rows = _strict_rows(out)
    got = sorted(os.fsencode(_source(r, fmt)) for r in rows)
    assert got == sorted(os.path.join(os.fsencode(d), n) for n in RAW_NAMES)
    assert sum(r["source"].endswith("\\xff\\xfe.png") for r in rows) == 1
    assert sum(r["source"].endswith("\\\\xff.png") for r in rows) == 1
    rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
    assert summary["written"] == 0 and summary["skipped_already_done"] == len(RAW_NAMES), err


def test_escape_name_round_trips():
    from ofa_sdk.scan_output import escape_name, unescape_name
    for raw in RAW_NAMES + [b"\\", b"\\\\x41", b"\x80\\x80", bytes(range(1, 256)).replace(b"/", b"")]:
        s = os.fsdecode(raw)
        e = escape_name(s)
        e.encode("utf-8")
        assert unescape_name(e) == s and os.fsencode(unescape_name(e)) == raw


_name = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(names=st.lists(_name, min_size=1, max_size=5, unique=True), cut=st.floats(0.05, 0.95))
def test_fuzzed_names_survive_scan_resume_and_strict_parsers(tiny_model, gallery_setup, tmp_path,
                                                             capsys, names, cut):
    import tempfile
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        d = Path(tmp) / "in"
        d.mkdir()
        files = sorted(os.path.join(os.fsencode(d), n + b".png") for n in names)
        for f in files:
            with open(f, "wb") as fh:
                fh.write(b"not an image")           # an error row is a row too
        for fmt in ("jsonl", "csv"):
            out = Path(tmp) / f"out.{fmt}"
            rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
            assert rc == 1 and summary["written"] == len(files), err
            full = out.read_bytes()
            assert sorted(os.fsencode(_source(r, fmt)) for r in _strict_rows(out)) == files
            # a write cut short inside the last row; resume redoes that row only
            last = full.rstrip(b"\n").rfind(b"\n") + 1 if fmt == "jsonl" else None
            if fmt == "csv":
                starts = [0]
                for line in io.StringIO(full.decode("utf-8"), newline=""):
                    starts.append(starts[-1] + len(line.encode("utf-8")))
                # the start of the last record: the csv module's own record boundaries
                recs, offs = [], 0
                reader = csv.reader(io.StringIO(full.decode("utf-8"), newline=""))
                for _ in reader:
                    recs.append(reader.line_num)
                last = starts[recs[-2]] if len(recs) > 1 else 0
            end = last + max(1, int((len(full) - last) * cut))
            if end >= len(full):
                end = len(full) - 1
            out.write_bytes(full[:end])
            rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
            assert summary["written"] == 1 and summary["skipped_already_done"] == len(files) - 1, (
                err, full, end)
            assert summary["repaired"]["torn_bytes_cut"] == end - last
            rows = _strict_rows(out)
            assert sorted(os.fsencode(_source(r, fmt)) for r in rows) == files   # once each


# ------------------------------------------------------------------------ galleries ----------
def _enrolled_gallery(tiny_model, folder, images):
    from ofa_sdk import Attributor
    folder.mkdir()
    g = folder / "g.db"
    att = Attributor(model=tiny_model, backend="torch", gallery=g)
    att.enroll("gen-a", images)
    att.gallery.close()
    return g


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_gallery_reads_and_refuses_writes(tiny_model, gallery_setup, tmp_path, capsys,
                                                    what):
    tmp = gallery_setup[0]
    g = _enrolled_gallery(tiny_model, tmp_path / "ro", tmp / "gen_0")
    before = sorted(os.listdir(g.parent))
    if what == "file":
        os.chmod(g, 0o444)
    else:
        os.chmod(g.parent, 0o555)
    try:
        assert Gallery(g).read_only
        rc, out, err = _cli(["info", "--json"], g, tiny_model, capsys)
        assert rc == 0 and [p["name"] for p in json.loads(out)["profiles"]] == ["gen-a"], err
        rc, out, err = _cli(["attribute", str(tmp / "gen_1"), "--json"], g, tiny_model, capsys)
        assert rc == 0 and len(json.loads(out)) == 4, err
        rc, out, err = _cli(["verify", str(tmp / "gen_1"), "--against", "gen-a", "--json"], g,
                            tiny_model, capsys)
        assert rc == 0, err
        for args in (["enroll", "gen-b", str(tmp / "gen_1")], ["remove", "gen-a"]):
            rc, out, err = _cli(args, g, tiny_model, capsys)
            assert rc == 2 and f"gallery {g} is read-only" in err and "Traceback" not in err, err
        if what == "folder":
            assert sorted(os.listdir(g.parent)) == before     # immutable: no lock files made
    finally:
        os.chmod(g.parent, 0o755)
        os.chmod(g, 0o644)
    assert Gallery(g).names() == ["gen-a"]


_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root without setpriv cannot be denied a permission")
def test_read_only_gallery_under_real_permission_checks(tiny_model, gallery_setup, tmp_path):
    """The same, with the operating system refusing the writes (root gives up the capability
    that lets it write anything): what a read-only share or mount does."""
    tmp = gallery_setup[0]
    g = _enrolled_gallery(tiny_model, tmp_path / "ro", tmp / "gen_0")
    os.chmod(g, 0o444)
    os.chmod(g.parent, 0o555)
    pre = _NO_DAC if os.geteuid() == 0 else []

    def run(*args):
        return subprocess.run(pre + [sys.executable, "-m", "ofa_sdk.cli", *args, "--gallery",
                                     str(g), "--model", str(tiny_model), "--backend", "torch"],
                              env=ENV, capture_output=True, text=True, timeout=300)
    try:
        res = run("info", "--json")
        assert res.returncode == 0 and "gen-a" in res.stdout, res.stderr
        res = run("attribute", str(tmp / "gen_1"), "--json")
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 4, res.stderr
        res = run("enroll", "gen-b", str(tmp / "gen_1"))
        assert res.returncode == 2 and f"gallery {g} is read-only" in res.stderr, res.stderr
    finally:
        os.chmod(g.parent, 0o755)
        os.chmod(g, 0o644)


def _profile(name):
    return Profile(name, "model-x", np.ones((2, 16), np.float32), np.ones((2, 8), np.float32))


def test_gallery_failures_are_told_apart(tmp_path, monkeypatch):
    from ofa_sdk.gallery import GalleryCorrupt, GalleryLocked, GalleryReadOnly, GalleryTooNew
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(GalleryCorrupt, match=f"gallery {garbage} is corrupt"):
        Gallery(garbage)

    newer = tmp_path / "newer.db"
    Gallery(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(GalleryTooNew, match="newer ofa-sdk"):
        Gallery(newer)

    path = tmp_path / "locked.db"
    monkeypatch.setattr(gmod, "BUSY_TIMEOUT_S", 0.2)
    g = Gallery(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")               # another process holds the write lock
    try:
        with pytest.raises(GalleryLocked, match=f"gallery {path} is locked by another process"):
            g.put(_profile("a"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    g.put(_profile("a"))                            # free again: the write goes through
    assert g.names() == ["a"]

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(GalleryReadOnly, match="does not exist and cannot be created"):
            Gallery(ro / "new.db")
    finally:
        os.chmod(ro, 0o755)
    for cls in (GalleryCorrupt, GalleryReadOnly, GalleryLocked, GalleryTooNew):
        assert issubclass(cls, GalleryError)


# ---------------------------------------------------------------------- model headers --------
def _safetensors(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


def test_hostile_model_headers_give_the_clear_refusal(tiny_model, tmp_path, capsys):
    from ofa_sdk.weights import MAX_HEADER_BYTES, load_model
    deep = 200_000
    cases = {
        "nested-header": _safetensors(b"[" * deep + b"]" * deep),
        "nested-metadata": _safetensors(json.dumps(
            {"__metadata__": {"ofa": "[" * deep + "]" * deep}}).encode()),
        "metadata-not-object": _safetensors(json.dumps({"__metadata__": "ofa"}).encode()),
        "config-not-object": _safetensors(json.dumps(
            {"__metadata__": {"ofa": json.dumps({"config": [1]})}}).encode()),
        "huge-header": _safetensors(b"{" + b" " * (MAX_HEADER_BYTES + 1) + b"}"),
    }
    for name, bad in refused_model_files(tmp_path, cases).items():
        rc = cli.main(["info", "--model", str(bad), "--gallery", str(tmp_path / "g.db")])
        err = capsys.readouterr().err
        assert rc == 2 and str(bad) in err and "Traceback" not in err, (name, err)
    assert "nested too deeply" in str(pytest.raises(ValueError, load_model,
                                                    tmp_path / "nested-header.safetensors").value)
    assert "limit" in str(pytest.raises(ValueError, load_model,
                                        tmp_path / "huge-header.safetensors").value)
    os.mkfifo(tmp_path / "pipe.safetensors")
    got = []
    t = threading.Thread(target=lambda: got.append(
        pytest.raises(ValueError, load_model, tmp_path / "pipe.safetensors")), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "loading a named pipe as a model blocked"
    assert "named pipe" in str(got[0].value)


# ------------------------------------------------------------------- damaged outputs ---------
@pytest.fixture(scope="module")
def scanned(tiny_model, gallery_setup, tmp_path_factory):
    """Complete JSONL and CSV scans of a folder of 12 images (one broken)."""
    tmp, g = gallery_setup
    d = tmp_path_factory.mktemp("damaged") / "q"
    make_images(d, 11, 12)
    (d / "broken.png").write_bytes(b"\x89PNG broken")
    outs = {}
    for fmt in ("jsonl", "csv"):
        out = d.parent / f"full.{fmt}"
        assert cli.main(["scan", str(d), "-o", str(out), "--no-progress", "--gallery", str(g),
                         "--model", str(tiny_model), "--backend", "torch"]) == 1
        outs[fmt] = out.read_bytes()
    return d, outs


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("damage", ["quote-at-start", "quote-in-field", "garbage-line"])
def test_resume_keeps_every_complete_row_after_a_damaged_line(tiny_model, gallery_setup, scanned,
                                                              tmp_path, capsys, fmt, damage):
    d, outs = scanned
    lines = outs[fmt].splitlines(keepends=True)
    k = 4                                           # a row in the middle
    if damage == "quote-at-start":
        lines[k] = b'"' + lines[k]
    elif damage == "quote-in-field":
        lines[k] = lines[k][:len(str(d)) + 3] + b'"' + lines[k][len(str(d)) + 3:]
    else:
        lines.insert(k, b"this is not a row\n")
    damaged = b"".join(lines)
    out = tmp_path / f"damaged.{fmt}"
    out.write_bytes(damaged)
    rc, summary, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
    data = out.read_bytes()
    assert data.startswith(damaged), "a complete row was cut off"
    assert summary["repaired"]["torn_bytes_cut"] == 0
    if damage == "garbage-line" or (damage == "quote-at-start"):
        assert summary["repaired"]["damaged_lines"] == [k + 1], summary
    # at most the damaged row's own file is scanned again; every other row is kept
    assert summary["written"] <= 1, summary
    assert summary["skipped_already_done"] >= 11, summary
    rc, again, err = _scan(d, out, gallery_setup[1], tiny_model, capsys)
    assert again["written"] == 0 and out.read_bytes() == data      # stable once repaired


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_cuts_only_a_torn_last_row_and_says_so(tiny_model, gallery_setup, scanned, tmp_path,
                                                      capsys, fmt):
    d, outs = scanned
    full = outs[fmt]
    last = full.rstrip(b"\n").rfind(b"\n") + 1
    out = tmp_path / f"torn.{fmt}"
    out.write_bytes(full[: last + 10])
    rc, summary, err = _cli(["scan", str(d), "-o", str(out), "--no-progress"], gallery_setup[1],
                            tiny_model, capsys)
    assert "repaired: cut a torn last row (10 bytes)" in summary
    assert out.read_bytes()[:last] == full[:last]
    assert len(_strict_rows(out)) == 12
