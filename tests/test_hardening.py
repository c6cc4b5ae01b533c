"""Hostile inputs and production failure modes (issue 16): nothing crashes, nothing is lost.

Gallery: a real process SIGKILLed inside a write transaction, several processes writing and
reading one file, schema versions. Model files: the shipped hash manifest, tampered, truncated
and corrupt files. Scans: real ``ofa-sdk scan`` processes interrupted by SIGINT and SIGKILL, then
resumed. Threads: one Attributor shared by several threads. Memory: a bounded soak.
"""
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import enrolled_gallery, make_images, refused_model_files

from ofa_sdk import gallery as gmod
from ofa_sdk.gallery import Gallery, GalleryError, Profile

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _profile(name, value, rows=4, dim=16, hidden=8):
    """A profile whose every number is ``value``: a torn or mixed write would show."""
    return Profile(name, "model-x", np.full((rows, dim), value, np.float32),
                   np.full((rows, hidden), value, np.float32), {"version": value}, 0.0,
                   np.full((3, 4, 4), value, np.float32))


def _wait_for(cond, timeout=60.0, what="condition"):
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _integrity(path):
    with sqlite3.connect(str(path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


# ---------------------------------------------------------------------------------- gallery --
CHILD_BLOCKS_IN_COMMIT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from ofa_sdk import gallery as g
    path, marker = sys.argv[1], Path(sys.argv[2])
    def hold(what):                   # inside the transaction, INSERT done, COMMIT not yet
        marker.write_text(what)
        time.sleep(600)
    g._before_commit = hold
    v = 2.0
    p = g.Profile("gen-a", "model-x", np.full((4, 16), v, np.float32),
                  np.full((4, 8), v, np.float32), {"version": v}, 0.0,
                  np.full((3, 4, 4), v, np.float32))
    g.Gallery(path).put(p, overwrite=True)
    print("committed")                # never reached
""")


def test_gallery_sigkill_inside_overwrite_keeps_previous_profile(tmp_path):
    path = tmp_path / "g.db"
    gal = Gallery(path)
    gal.put(_profile("gen-a", 1.0))
    gal.close()
    marker = tmp_path / "in-transaction"
    child = subprocess.Popen([sys.executable, "-c", CHILD_BLOCKS_IN_COMMIT, str(path), str(marker)],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: marker.exists() or child.poll() is not None, what="the child's put")
        assert marker.exists(), child.communicate()
        # the child really holds the write transaction: nobody else can start one now
        probe = sqlite3.connect(str(path), timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
        # ... while readers still see the committed (old) profile (WAL)
        assert Gallery(path).get("gen-a").metadata["version"] == 1.0
        probe.close()
    finally:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL and b"committed" not in out
    assert _integrity(path) == "ok"
    gal = Gallery(path)
    prof = gal.get("gen-a")
    assert gal.names() == ["gen-a"] and prof.metadata["version"] == 1.0
    assert (prof.support == 1.0).all() and (prof.support_part == 1.0).all()
    assert (prof.spectrum == 1.0).all()
    gal.put(_profile("gen-a", 3.0), overwrite=True)   # the dead writer's lock is gone
    assert Gallery(path).get("gen-a").metadata["version"] == 3.0


CHILD_PUT_LOOP = textwrap.dedent("""
    import sys
    import numpy as np
    from ofa_sdk.gallery import Gallery, Profile
    gal = Gallery(sys.argv[1])
    i = 0
    while True:                       # overwrite one profile and add others until killed
        i += 1
        for name in ("gen-a", f"extra-{i}"):
            v = float(i)
            gal.put(Profile(name, "model-x", np.full((64, 16), v, np.float32),
                            np.full((64, 8), v, np.float32), {"version": v}, 0.0,
                            np.full((3, 8, 8), v, np.float32)), overwrite=True)
""")


def test_gallery_sigkill_during_a_loop_of_puts(tmp_path):
    path = tmp_path / "g.db"
    Gallery(path).put(_profile("gen-a", 0.0))
    child = subprocess.Popen([sys.executable, "-c", CHILD_PUT_LOOP, str(path)], env=ENV,
                             stderr=subprocess.PIPE)
    reader = Gallery(path)
    try:
        _wait_for(lambda: len(reader) >= 20 or child.poll() is not None, what="20 puts")
        assert child.poll() is None, child.communicate()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert _integrity(path) == "ok"
    gal = Gallery(path)
    for name in gal.names():          # every profile is one whole write, never a mix
        p = gal.get(name)
        v = p.metadata["version"]
        assert (p.support == v).all() and (p.support_part == v).all() and (p.spectrum == v).all()
    n = len(gal)
    assert gal.get("gen-a").metadata["version"] >= n - 2   # the overwrites did land


CHILD_WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from ofa_sdk.gallery import Gallery, Profile
    path, k, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    while not os.path.exists(go):
        time.sleep(0.005)
    gal = Gallery(path)               # three processes create the same new file at once
    for i in range(20):
        v = float(100 * k + i)
        gal.put(Profile(f"w{k}-{i:02d}", "model-x", np.full((8, 16), v, np.float32),
                        np.full((8, 8), v, np.float32), {"version": v}, 0.0), overwrite=True)
        assert gal.get(f"w{k}-{i:02d}").metadata["version"] == v
        names = gal.names()
        other = gal.get(names[(i * 7) % len(names)])
        assert (other.support == other.metadata["version"]).all()
    print("ok", k)
""")


def test_gallery_several_processes_write_and_read_at_once(tmp_path):
    path, go = tmp_path / "sub" / "g.db", tmp_path / "go"
    kids = [subprocess.Popen([sys.executable, "-c", CHILD_WORKER, str(path), str(k), str(go)],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for k in range(3)]
    time.sleep(1.0)                   # let them import, then release them together
    go.write_text("go")
    results = [(p.wait(timeout=300), *p.communicate()) for p in kids]
    for rc, out, err in results:
        assert rc == 0 and "locked" not in err, err
    gal = Gallery(path)
    expected = sorted(f"w{k}-{i:02d}" for k in range(3) for i in range(20))
    assert gal.names() == expected
    for name in expected:
        k, i = int(name[1]), int(name[3:])
        assert gal.get(name).metadata["version"] == 100 * k + i
    assert _integrity(path) == "ok"


def test_gallery_refuses_a_future_schema_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "g.db"
    Gallery(path).put(_profile("gen-a", 1.0))
    future = gmod.SCHEMA_VERSION + 5
    with sqlite3.connect(str(path)) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(future),))
    with pytest.raises(GalleryError) as e:
        Gallery(path)
    assert str(e.value) == (f"gallery {path} was written by a newer ofa-sdk (schema {future}); "
                            f"this SDK reads up to {gmod.SCHEMA_VERSION}; upgrade ofa-sdk")
    with sqlite3.connect(str(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(future)
    # the CLI reports it as a setup error (exit 2) with the same message
    out = subprocess.run([sys.executable, "-m", "ofa_sdk.cli", "info", "--gallery", str(path)],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and "newer ofa-sdk" in out.stderr and "Traceback" not in out.stderr


def test_gallery_migrates_older_schemas(tmp_path, monkeypatch):
    # a gallery of the first 0.1 snapshots: schema 1 without the spectrum columns
    old = tmp_path / "old.db"
    with sqlite3.connect(str(old)) as db:
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE profiles (
                name TEXT PRIMARY KEY, model_id TEXT NOT NULL, created REAL NOT NULL,
                dim INTEGER NOT NULL, hidden INTEGER NOT NULL, n_support INTEGER NOT NULL,
                support BLOB NOT NULL, support_part BLOB NOT NULL, metadata TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema', '1');""")
        db.execute("INSERT INTO profiles VALUES (?,?,?,?,?,?,?,?,?)",
                   ("gen-a", "model-x", 1.0, 16, 8, 4, np.ones((4, 16), np.float32).tobytes(),
                    np.ones((4, 8), np.float32).tobytes(), "{}"))
    gal = Gallery(old)
    assert gal.get("gen-a").spectrum is None and gal.get("gen-a").n_support == 4
    gal.put(_profile("gen-b", 2.0))
    assert (Gallery(old).get("gen-b").spectrum == 2.0).all()

    # the migration path: a schema-1 gallery opened by an SDK whose schema is 2
    path = tmp_path / "g.db"
    Gallery(path).put(_profile("gen-a", 1.0))
    ran = []

    def to_2(db):
        ran.append(1)
        db.execute("ALTER TABLE profiles ADD COLUMN note TEXT")
    monkeypatch.setattr(gmod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(gmod, "MIGRATIONS", {1: to_2})
    gal = Gallery(path)
    assert ran == [1] and gal.get("gen-a").metadata["version"] == 1.0
    with sqlite3.connect(str(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "2"
    Gallery(path)
    assert ran == [1]                 # migrated once
    # a failing migration rolls back: the gallery stays at its old version, data intact
    path2 = tmp_path / "g2.db"
    monkeypatch.setattr(gmod, "SCHEMA_VERSION", 1)
    Gallery(path2).put(_profile("gen-a", 1.0))
    monkeypatch.setattr(gmod, "SCHEMA_VERSION", 2)

    def broken(db):
        db.execute("DROP TABLE profiles")
        raise RuntimeError("migration bug")
    monkeypatch.setattr(gmod, "MIGRATIONS", {1: broken})
    with pytest.raises(RuntimeError, match="migration bug"):
        Gallery(path2)
    monkeypatch.setattr(gmod, "SCHEMA_VERSION", 1)
    assert Gallery(path2).get("gen-a").metadata["version"] == 1.0


def test_gallery_failed_write_rolls_back(tmp_path, monkeypatch):
    gal = Gallery(tmp_path / "g.db")
    gal.put(_profile("gen-a", 1.0))

    def fail(what):
        raise OSError("disk on fire")
    monkeypatch.setattr(gmod, "_before_commit", fail)
    with pytest.raises(OSError):
        gal.put(_profile("gen-a", 2.0), overwrite=True)
    with pytest.raises(OSError):
        gal.remove("gen-a")
    monkeypatch.setattr(gmod, "_before_commit", None)
    assert gal.get("gen-a").metadata["version"] == 1.0
    gal.put(_profile("gen-b", 2.0))   # the connection is not left inside a transaction
    assert Gallery(tmp_path / "g.db").names() == ["gen-a", "gen-b"]
    with pytest.raises(GalleryError, match="exists"):
        gal.put(_profile("gen-b", 3.0))


# ------------------------------------------------------------------------------ model files --
def test_shipped_manifest_matches_the_shipped_files():
    from ofa_sdk.weights import DEFAULT_MODEL, MANIFEST_NAME, check_manifest, read_manifest
    folder = DEFAULT_MODEL.parent
    manifest = read_manifest(folder)
    assert DEFAULT_MODEL.name in manifest, f"{folder / MANIFEST_NAME} must list the shipped model"
    import hashlib
    for name, entry in manifest.items():
        data = (folder / name).read_bytes()
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert check_manifest(DEFAULT_MODEL) is True


@pytest.fixture
def shipped_copy(tmp_path):
    from ofa_sdk.weights import DEFAULT_MODEL, MANIFEST_NAME
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(DEFAULT_MODEL, folder / DEFAULT_MODEL.name)
    shutil.copy(DEFAULT_MODEL.parent / MANIFEST_NAME, folder / MANIFEST_NAME)
    return folder / DEFAULT_MODEL.name


def test_listed_model_file_tampered_or_truncated_is_refused(shipped_copy):
    from ofa_sdk.weights import load_model
    from ofa_sdk.weights import DEFAULT_MODEL
    assert load_model(shipped_copy).model_id == load_model(DEFAULT_MODEL).model_id  # intact copy
    data = bytearray(shipped_copy.read_bytes())
    data[len(data) // 2] ^= 0x01                 # one bit in the tensor data: still loadable
    shipped_copy.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        load_model(shipped_copy)
    msg = str(e.value)
    assert str(shipped_copy) in msg and "sha256" in msg and "integrity" in msg
    shipped_copy.write_bytes(bytes(data[: len(data) - 1000]))
    with pytest.raises(ValueError) as e:
        load_model(shipped_copy)
    assert str(shipped_copy) in str(e.value) and "size" in str(e.value)


def test_manifest_is_refreshed_by_the_sdk_writers(tiny_model, tmp_path):
    from ofa_sdk.weights import check_manifest, load_model, update_meta, write_manifest
    folder = tmp_path / "w"
    folder.mkdir()
    f = folder / "m.safetensors"
    shutil.copy(tiny_model, f)
    shutil.copy(tiny_model, folder / "unlisted.safetensors")
    write_manifest(folder)
    (folder / "unlisted.safetensors").unlink()
    assert check_manifest(f) is True
    model_id = load_model(f).model_id
    update_meta(f, {"calibration": {"prototype": {"a": 8.0, "b": -4.0}}})  # ofa-train calibrate
    assert check_manifest(f) is True and load_model(f).model_id == model_id


@pytest.mark.parametrize("cut", [0, 5, 8, 50, 0.5, -1])
def test_unlisted_corrupt_model_file_gives_a_clear_value_error(tiny_model, tmp_path, cut):
    from ofa_sdk.weights import load_model
    data = tiny_model.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    bad = tmp_path / "mine.safetensors"
    bad.write_bytes(data[:n])
    with pytest.raises(ValueError) as e:
        load_model(bad)
    assert str(bad) in str(e.value)


def test_unlisted_garbage_model_files_give_a_clear_value_error(tiny_model, tmp_path):
    from ofa_sdk import Attributor
    from ofa_sdk.weights import load_model
    data = tiny_model.read_bytes()
    n = int.from_bytes(data[:8], "little")
    cases = {
        "garbage": os.urandom(4096),
        "huge-header": (10 ** 12).to_bytes(8, "little") + b"{}",
        "header-not-json": data[:8] + b"\xff" * n + data[8 + n:],
        "data-garbled": data[: 8 + n] + os.urandom(len(data) - 8 - n)[: (len(data) - 8 - n) // 2],
    }
    refused_model_files(tmp_path, cases)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Attributor(model=tmp_path / "garbage.safetensors")
    assert load_model(tiny_model).model_id      # an intact unlisted file still loads


# ------------------------------------------------------------------------------------ scans --
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
        _wait_for(lambda: (marker.exists() and _complete_rows(out) >= 1) or proc.poll() is not None,
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


# ---------------------------------------------------------------------------------- threads --
def test_attributor_shared_by_threads_matches_sequential_calls(tiny_model):
    from ofa_sdk import Attributor
    att = Attributor(model=tiny_model, backend="torch", gallery=None)
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (40, 40, 3), np.uint8)  # noqa: E731
    att.enroll("gen-a", [img() for _ in range(6)])
    att.enroll("gen-b", [img() for _ in range(6)])
    inputs = [[img() for _ in range(5)] for _ in range(4)]

    def work(k):
        xs = inputs[k]
        res = att.attribute(xs)
        return ([(r.label, r.score, tuple(sorted(r.scores.items()))) for r in res],
                att.verify(xs, "gen-b"), att.fingerprint(xs))

    expected = [work(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, [k for _ in range(3) for k in range(4)]))
    for i, (labels, ver, fp) in enumerate(got):
        e_labels, e_ver, e_fp = expected[i % 4]
        assert [x[0] for x in labels] == [x[0] for x in e_labels]
        np.testing.assert_allclose([x[1] for x in labels], [x[1] for x in e_labels], atol=1e-5)
        np.testing.assert_allclose(ver, e_ver, atol=1e-5)
        np.testing.assert_allclose(fp, e_fp, atol=1e-5)


# ----------------------------------------------------------------------------------- memory --
def test_bounded_soak_memory_stays_flat(tmp_path):
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--calls", "300",
                          "--every", "100", "--warmup", "100", "--out", str(out)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["calls"] == 300 and len(report["samples"]) == 4
    assert report["growth_after_warmup_mb"] < 50, report
