"""Gallery durability (ofa_sdk.gallery) under production failure modes: a real process
SIGKILLed inside a write transaction or a loop of writes, several processes writing and reading
one file, schema versions newer and older than this SDK, and a failed write rolled back."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from ofa_sdk import gallery as gmod
from ofa_sdk.gallery import Gallery, GalleryError, Profile

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _profile(name, value, rows=4, dim=16, hidden=8):
    """A profile whose every number is ``value``: a torn or mixed write would show."""
    return Profile(name, "model-x", np.full((rows, dim), value, np.float32),
                   np.full((rows, hidden), value, np.float32), {"version": value}, 0.0,
                   np.full((3, 4, 4), value, np.float32))


def _integrity(path):
    with sqlite3.connect(str(path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


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
        wait_for(lambda: marker.exists() or child.poll() is not None, what="the child's put")
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
        wait_for(lambda: len(reader) >= 20 or child.poll() is not None, what="20 puts")
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


CHILD_ADDS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ofa_sdk import Attributor
    model, path, folder, me, other = sys.argv[1:6]
    att = Attributor(model=model, gallery=path, crops=1, backend="torch")
    images = sorted(str(p) for p in Path(folder).iterdir())
    Path(me).write_text("ready")
    while not Path(other).exists():          # both start embedding together
        time.sleep(0.01)
    att.enroll("gen-a", images, add=True)
    print("added", len(images))
""")


def test_two_processes_adding_to_one_profile_keep_every_image(tiny_model, tmp_path):
    """Two real processes add 5 and 7 images to one profile at once: the profile ends with 12
    more (each merge reads and writes in one write transaction; reading before embedding, as
    the add did, let the second writer drop the first one's images)."""
    from conftest import make_images
    from ofa_sdk import Attributor
    path = tmp_path / "g.db"
    Attributor(model=tiny_model, gallery=path, crops=1, backend="torch").enroll(
        "gen-a", make_images(tmp_path / "base", 3, 0))
    make_images(tmp_path / "five", 5, 1)
    make_images(tmp_path / "seven", 7, 2)
    r = [tmp_path / "ready-1", tmp_path / "ready-2"]
    kids = [subprocess.Popen([sys.executable, "-c", CHILD_ADDS, str(tiny_model), str(path),
                              str(tmp_path / f), str(r[i]), str(r[1 - i])], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, f in enumerate(("five", "seven"))]
    for k in kids:
        out, err = k.communicate(timeout=120)
        assert k.returncode == 0, err
    prof = Gallery(path).get("gen-a")
    assert prof.n_support == 15 and prof.metadata["used"] == 15
    assert len(prof.metadata["crop_counts"]) == 15 and len(prof.metadata["added"]) == 2
    assert _integrity(path) == "ok"


def test_an_add_never_brings_back_a_removed_profile(tiny_model, tmp_path):
    from conftest import make_images
    from ofa_sdk import Attributor
    from ofa_sdk.gallery import ProfileNotFound
    path = tmp_path / "g.db"
    att = Attributor(model=tiny_model, gallery=path, crops=1, backend="torch")
    att.enroll("gen-a", make_images(tmp_path / "a", 3, 0))
    more = make_images(tmp_path / "b", 3, 1)

    def images():                       # another process removes the profile mid-add
        Gallery(path).remove("gen-a")
        yield from more
    with pytest.raises(ProfileNotFound, match="removed .* while images were being added"):
        att.enroll("gen-a", images(), add=True)
    assert "gen-a" not in Gallery(path)
    # an add to a profile that did not exist when it began creates it
    assert att.enroll("gen-b", more, add=True).n_support == 3


def test_a_snapshot_reads_in_one_transaction(tmp_path):
    """Gallery.read (what make_snapshot uses) against a writer removing and re-adding a profile
    over and over on another connection: every read sees the profile wholly or not at all,
    never listed and then gone."""
    import threading
    path = tmp_path / "g.db"
    gal = Gallery(path)
    for i in range(20):
        gal.put(_profile(f"p{i:02d}", float(i)))
    stop = threading.Event()

    def churn():
        w = Gallery(path)
        while not stop.is_set():
            w.remove("p05")
            w.put(_profile("p05", 5.0))
    t = threading.Thread(target=churn)
    t.start()
    try:
        reader = Gallery(path)
        sizes = set()
        for _ in range(300):
            profs = reader.read()          # raises ProfileNotFound if listed-then-gone
            sizes.add(len(profs))
            assert all((p.support == p.metadata["version"]).all() for p in profs)
    finally:
        stop.set()
        t.join()
    assert sizes <= {19, 20}


def test_user_metadata_lives_in_its_own_namespace(tiny_model, tmp_path):
    from conftest import make_images
    from ofa_sdk import Attributor
    att = Attributor(model=tiny_model, crops=1, backend="torch")
    prof = att.enroll("gen-a", make_images(tmp_path / "a", 4, 0),
                      metadata={"crop_counts": "mine", "used": -1, "team": "x"})
    assert prof.metadata["crop_counts"] == [1] * 4 and prof.metadata["used"] == 4
    assert prof.metadata["user"] == {"crop_counts": "mine", "used": -1, "team": "x"}
    added = att.enroll("gen-a", make_images(tmp_path / "b", 2, 1), add=True,
                       metadata={"team": "y"})
    assert added.metadata["user"] == {"crop_counts": "mine", "used": -1, "team": "y"}
    assert added.metadata["crop_counts"] == [1] * 6
    att.attribute(make_images(tmp_path / "q", 1, 2))      # thresholds read our fields, not yours
