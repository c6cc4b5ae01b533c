"""Discovery of new generators among unknown images: clustering (ofa_sdk.discovery), the
Attributor API (discover, enroll_cluster) and the command line (discover, enroll --from-cluster).

Clustering quality is tested on synthetic fingerprints with a known answer (tight groups around
random directions, plus diffuse rows standing for real photos); the tiny model, whose random
weights do not separate image families, tests the mechanics end to end."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from conftest import make_images  # noqa: E402
from ofa_sdk import discovery  # noqa: E402
from ofa_sdk.discovery import discover, reference_from  # noqa: E402

D = 48
SIGMA = 0.06     # per-dimension spread of a generator's fingerprints around its direction


def mixture(rng, groups, sizes, diffuse=0, sigma=SIGMA):
    """Rows around ``groups`` random unit directions (labels 0..), then ``diffuse`` rows of
    isotropic noise (label -1)."""
    centres = rng.standard_normal((groups, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = [centres[g] + sigma * rng.standard_normal((n, D)) for g, n in zip(range(groups), sizes)]
    x.append(rng.standard_normal((diffuse, D)))
    y = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)] + [np.full(diffuse, -1)])
    return np.concatenate(x), y


@pytest.fixture
def ref():
    """The enrolled profiles: three other generators of the same spread."""
    x, y = mixture(np.random.default_rng(99), 3, [30, 30, 30])
    return reference_from({f"p{g}": x[y == g] for g in range(3)})


def purity(y, labels):
    hit = [np.bincount(y[(labels == c) & (y >= 0)] if ((labels == c) & (y >= 0)).any()
                       else [0]).max() for c in np.unique(labels[labels >= 0])]
    return sum(hit) / max(1, (labels >= 0).sum())


@pytest.mark.parametrize("method", ["agglomerative", "hdbscan"])
def test_a_mix_with_a_known_answer(ref, method):
    from sklearn.metrics import adjusted_rand_score
    x, y = mixture(np.random.default_rng(0), 4, [40, 30, 25, 20], diffuse=30)
    res = discover(x, [f"img{i}" for i in range(len(x))], method=method, reference=ref)
    assert len(res.clusters) == 4 and purity(y, res.labels) > 0.97
    # the default cut (chosen on the development sets) leaves a group's outlying members as
    # noise rather than merge groups; a looser cut takes them in
    assert np.mean(res.labels[y >= 0] < 0) < 0.15
    assert adjusted_rand_score(y, res.labels) > (0.9 if method == "hdbscan" else 0.75)
    if method == "agglomerative":
        loose = discover(x, method=method, reference=ref, quantile=0.95)
        assert len(loose.clusters) == 4 and adjusted_rand_score(y, loose.labels) > 0.9
    noise = set(res.noise)
    assert sum(i in noise for i in np.flatnonzero(y < 0)) >= 27      # diffuse rows are noise
    # every input is accounted for exactly once
    members = sorted([i for c in res.clusters for i in c.members] + res.noise)
    assert members == list(range(len(x)))
    assert [c.size for c in res.clusters] == sorted((c.size for c in res.clusters), reverse=True)
    big = res.clusters[0]
    assert 0.7 < big.cohesion < 1.5          # as tight as the enrolled generators
    assert big.own_cosine > 0.9
    assert big.representatives == big.members[:discovery.N_EXAMPLES]
    assert big.outliers[0] == big.members[-1]


def test_looser_groups_report_a_larger_cohesion(ref):
    x, _ = mixture(np.random.default_rng(1), 1, [40], sigma=2 * SIGMA)
    res = discover(x, reference=ref, method="agglomerative", distance=10.0)
    assert len(res.clusters) == 1 and res.clusters[0].cohesion > 1.6
    # at the cut of the enrolled profiles' spread it is too loose to be one of them
    assert discover(x, reference=ref).clusters == []


def test_empty_input(ref, tmp_path):
    res = discover(np.zeros((0, D)), [], reference=ref)
    assert res.clusters == [] and res.noise == [] and len(res.labels) == 0
    discovery.write_report(res, tmp_path / "out")
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["images"] == 0 and s["clusters"] == 0 and s["noise_sources"] == []


def test_all_noise_input(ref):
    x, _ = mixture(np.random.default_rng(2), 0, [], diffuse=80)
    res = discover(x, reference=ref)          # the default: the cut of the profiles' spread
    assert res.clusters == [] and res.noise == list(range(80))


def test_every_image_of_one_generator(ref):
    x, _ = mixture(np.random.default_rng(3), 1, [80])
    res = discover(x, reference=ref)
    assert len(res.clusters) == 1 and res.clusters[0].size >= 76


def test_hdbscan_has_no_scale_of_its_own(ref):
    """Why the default is the agglomerative cut: HDBSCAN never answers "one cluster"."""
    x, _ = mixture(np.random.default_rng(3), 1, [80])
    assert len(discover(x, reference=ref, method="hdbscan").clusters) != 1


def test_fewer_images_than_the_minimum_cluster_are_noise(ref):
    x, _ = mixture(np.random.default_rng(4), 1, [4])
    res = discover(x, reference=ref, min_cluster_size=5)
    assert res.clusters == [] and res.noise == [0, 1, 2, 3]


@pytest.mark.parametrize("method", ["agglomerative", "hdbscan"])
def test_two_stage_above_the_exact_limit(ref, method):
    from sklearn.metrics import adjusted_rand_score
    x, y = mixture(np.random.default_rng(5), 6, [400, 300, 300, 200, 100, 30], diffuse=200)
    res = discover(x, method=method, reference=ref, exact_limit=1000, micro_clusters=150)
    assert res.params["two_stage"] and "micro_s" in res.timings
    assert len(res.clusters) == 6
    assert adjusted_rand_score(y, res.labels) > 0.9 and purity(y, res.labels) > 0.97
    assert (res.labels[y < 0] < 0).mean() > 0.9


def test_the_transform_is_the_metric():
    """Two groups that differ only in the dimensions a transform keeps: found with it, merged
    without it."""
    rng = np.random.default_rng(6)
    base = np.zeros(D)
    base[0] = 1
    x = np.tile(base, (60, 1)) + 0.01 * rng.standard_normal((60, D))
    x[30:, 1] += 0.1                                    # a small, consistent shift
    y = np.repeat([0, 1], 30)

    def keep_two(f):
        return np.asarray(f)[:, :2] * 100
    res = discover(x, transform=keep_two, method="hdbscan")
    assert len(res.clusters) == 2
    assert {tuple(np.unique(y[c.members])) for c in res.clusters} == {(0,), (1,)}
    assert len(discover(x, method="agglomerative", distance=0.5).clusters) == 1


def test_nearest_profile_is_reported(ref):
    x, y = mixture(np.random.default_rng(7), 2, [30, 30])
    protos = np.stack([discovery.unit_features(x[y == g].mean(0, keepdims=True))[0] for g in (0, 1)])

    def score_fn(f):
        return discovery.unit_features(f) @ protos.T
    res = discover(x, reference=ref, score_fn=score_fn, profile_names=["g0", "g1"],
                   thresholds=[0.5, 0.5])
    for c in res.clusters:
        g = int(np.bincount(y[c.members]).argmax())
        # scored from the members (the mean fingerprint would read higher than any of them)
        assert c.nearest_profile == f"g{g}" and c.nearest_score > 0.9
        members = score_fn(x[c.members])[:, g]
        assert c.nearest_score <= members.max() and c.nearest_threshold == 0.5


def test_clear_errors(ref, tmp_path):
    x, _ = mixture(np.random.default_rng(8), 1, [10])
    with pytest.raises(ValueError, match="method"):
        discover(x, method="kmeans")
    with pytest.raises(ValueError, match="needs a cut"):
        discover(x, method="agglomerative")
    assert discover(x).method == "hdbscan"          # auto without profiles
    assert discover(x, reference=ref).method == discovery.DEFAULT_METHOD
    with pytest.raises(ValueError, match="3 sources for 10"):
        discover(x, ["a", "b", "c"])
    bad = x.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match=r"rows \[2\] are not finite"):
        discover(bad)
    with pytest.raises(ValueError, match="min_cluster_size"):
        discover(x, min_cluster_size=1)
    with pytest.raises(FileNotFoundError, match="not a cluster folder"):
        discovery.read_cluster(tmp_path)


def test_unknown_rows_of_scan_outputs(tmp_path):
    rows = [{"source": "a.png", "label": "unknown"}, {"source": "b.png", "label": "gen"},
            {"source": "c.png", "label": "error"}, {"source": "d.png", "label": "unknown"}]
    j = tmp_path / "scan.jsonl"
    j.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"source": "e.png", "lab')
    assert discovery.unknown_sources(j) == ["a.png", "d.png"]      # torn last row ignored
    c = tmp_path / "scan.csv"
    with open(c, "w", newline="") as f:
        w = csv.DictWriter(f, ["source", "label", "score"])
        w.writeheader()
        w.writerows(rows)
    assert discovery.unknown_sources(c) == ["a.png", "d.png"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "part-1.parquet")
    assert discovery.is_scan_output(folder) and not discovery.is_scan_output(tmp_path)
    assert discovery.unknown_sources(folder) == ["a.png", "d.png"]
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="no 'source', 'label' column"):
        discovery.unknown_sources(tmp_path / "other.csv")
    (tmp_path / "other.jsonl").write_text("not json\n[1]\n")
    with pytest.raises(ValueError, match="not a scan output"):
        discovery.unknown_sources(tmp_path / "other.jsonl")


# File names a scan output writes in another form: escaped (a backslash, a byte that is not
# UTF-8) or, in CSV, neutralised (a leading = + - @ or ').
HOSTILE_NAMES = [b"=a.png", b"back\\slash.png", b"caf\xe9.png", b"+b.png", b"-c,d.png",
                 b"@e.png", b"'f.png", b"\\x41.png", b"plain.png"]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_unknown_sources_are_the_files_scanned(tiny_model, tmp_path, monkeypatch, suffix):
    """A real scan over files whose names the output escapes or neutralises: the unknowns read
    back (and discovered) are the exact paths of those files (scan outputs name files by
    absolute path, so given relative names come back absolute)."""
    import os
    from ofa_sdk import Attributor
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
    folder = tmp_path / "in"
    made = make_images(folder, len(HOSTILE_NAMES), 40, kind="blocky")
    for src, name in zip(made, HOSTILE_NAMES):
        os.rename(os.fsencode(src), os.path.join(os.fsencode(folder), name))
    monkeypatch.chdir(folder)
    names = [os.fsdecode(n) for n in HOSTILE_NAMES]
    att = Attributor(model=tiny_model, crops=1, gallery=tmp_path / "g.db")
    out = tmp_path / f"scan.{suffix}"
    att.scan(names, threshold=1.0, progress=False, output=out)
    if suffix == "csv":     # the names really are written in another form
        text = out.read_text()
        assert "/=a.png" in text and "back\\\\slash.png" in text and "caf\\xe9.png" in text
    found = discovery.unknown_sources(out)
    absolute = [os.path.abspath(n) for n in names]
    assert found == absolute and all(os.path.exists(s) for s in found)
    res = att.discover(out, pictures=False)
    assert res.skipped == [] and sorted(res.sources) == sorted(absolute)
    # a rescan to the same output resumes through the same reader: nothing is scanned again
    assert att.scan(names, threshold=1.0, progress=False, output=out).written == 0


def test_the_api_clusters_fingerprints_and_asks_the_rule_for_its_metric(tiny_model):
    from ofa_sdk import Attributor
    att = Attributor(model=tiny_model, crops=1)
    x, y = mixture(np.random.default_rng(9), 2, [20, 20])
    x = x[:, :att.dim]
    calls = []

    class Rule:                      # the seam: a rule that defines its own feature map
        def __getattr__(self, k):
            return getattr(base, k)

        def feature_map(self, snapshot):
            calls.append(snapshot)
            return lambda f: 2 * discovery.unit_features(f)
    base, att.rule = att.rule, Rule()
    res = att.discover(x, sources=[f"s{i}" for i in range(len(x))], method="hdbscan")
    assert len(calls) == 1 and res.params["feature"] == "<lambda>"
    assert len(res.clusters) == 2 and res.sources[0] == "s0"


def png_ok(path):
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 50 and im.height > 50


def cli(*args, gallery, model, expect=0):
    cmd = [sys.executable, "-m", "ofa_sdk.cli", *args, "--gallery", str(gallery), "--model",
           str(model), "--crops", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == expect, (out.stdout, out.stderr)
    return out


def test_cli_scan_discover_enroll_rescan(tiny_model, tmp_path):
    g = tmp_path / "g.db"
    make_images(tmp_path / "known", 6, 20, kind="noise")
    make_images(tmp_path / "incoming" / "a", 12, 21, kind="blocky")
    make_images(tmp_path / "incoming" / "b", 12, 22, kind="noise")
    (tmp_path / "incoming" / "broken.png").write_bytes(b"\x89PNG broken")
    cli("enroll", "known", str(tmp_path / "known"), gallery=g, model=tiny_model)
    scan = tmp_path / "scan.jsonl"
    # an unreachable threshold: every usable image is unknown
    cli("scan", str(tmp_path / "incoming"), "-o", str(scan), "--threshold", "1.0",
        "--no-progress", gallery=g, model=tiny_model, expect=1)
    unknown = discovery.unknown_sources(scan)
    assert len(unknown) == 24

    out = tmp_path / "found"
    res = json.loads(cli("discover", str(scan), "-o", str(out), "--json",
                         gallery=g, model=tiny_model).stdout)
    s = json.loads((out / "summary.json").read_text())
    assert res["images"] == s["images"] == 24 and s["clusters"] >= 1
    found = [src for c in s["cluster_list"]
             for src in json.loads((out / c["folder"] / "members.json").read_text())["sources"]]
    noise = json.loads((out / "noise.json").read_text())
    assert sorted(found + noise) == sorted(unknown)            # nothing dropped
    first = s["cluster_list"][0]
    assert first["nearest_profile"] == "known" and 0 <= first["nearest_score"] <= 1
    assert first["cohesion"] is not None
    assert png_ok(out / "cluster-0" / "contact.png") and png_ok(out / "cluster-0" / "spectrum.png")
    text = cli("discover", str(scan), "-o", str(tmp_path / "again"), "--no-pictures",
               gallery=g, model=tiny_model).stdout
    assert "cluster-0" in text and "enroll NAME --from-cluster" in text
    assert not (tmp_path / "again" / "cluster-0" / "contact.png").exists()

    cli("enroll", "new-gen", "--from-cluster", str(out / "cluster-0"), gallery=g, model=tiny_model)
    from ofa_sdk.gallery import Gallery
    meta = Gallery(g).get("new-gen").metadata
    members = json.loads((out / "cluster-0" / "members.json").read_text())["sources"]
    assert meta["origin"] == "discovery" and meta["discovery"]["sources"] == members
    assert meta["discovery"]["cluster"] == 0 and meta["used"] == len(members)
    cli("enroll", "x", "--from-cluster", str(tmp_path), gallery=g, model=tiny_model, expect=2)
    cli("enroll", "x", str(tmp_path / "known"), "--from-cluster", str(out / "cluster-0"),
        gallery=g, model=tiny_model, expect=2)
    cli("enroll", "x", gallery=g, model=tiny_model, expect=2)

    rescan = tmp_path / "rescan.jsonl"
    cli("scan", str(tmp_path / "incoming"), "-o", str(rescan), "--no-progress",
        gallery=g, model=tiny_model, expect=1)
    rows = [json.loads(r) for r in rescan.read_text().splitlines()]
    assert all("new-gen" in r["scores"] for r in rows if r["label"] != "error")


def test_discover_a_folder_reports_unusable_images(tiny_model, tmp_path):
    g = tmp_path / "g.db"
    make_images(tmp_path / "in", 10, 30, kind="blocky")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    out = cli("discover", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--json",
              gallery=g, model=tiny_model, expect=1)
    res = json.loads(out.stdout)
    assert res["images"] == 10 and len(res["skipped"]) == 1 and "broken.png" in res["skipped"][0]
    cli("discover", str(tmp_path / "nothing"), "-o", str(tmp_path / "o2"), gallery=g,
        model=tiny_model, expect=2)
