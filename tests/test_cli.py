import csv
import json
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import make_images


def run(*args, gallery, model, expect=0):
    crops = [] if "--crops" in args else ["--crops", "1"]     # one crop: counts stay per image
    cmd = [sys.executable, "-m", "ofa_sdk.cli", *args, "--gallery", str(gallery), "--model", str(model),
           *crops]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == expect, (out.stdout, out.stderr)
    return out


@pytest.fixture
def folders(tmp_path):
    make_images(tmp_path / "gen_a", 5, 10, kind="noise")
    make_images(tmp_path / "gen_b", 5, 11, kind="blocky")
    q = tmp_path / "queries"
    make_images(q, 2, 12, kind="noise")
    make_images(q, 2, 13, kind="blocky")
    (q / "broken.png").write_bytes(b"\x89PNG broken")
    return tmp_path, q


def test_cli_end_to_end(tiny_model, folders):
    tmp, q = folders
    g = tmp / "gallery.db"
    out = run("enroll", "gen-a", str(tmp / "gen_a"), "--json", gallery=g, model=tiny_model)
    res = json.loads(out.stdout)
    assert res["support"] == 5 and 0 <= res["threshold"] <= 1
    out = run("enroll", "gen-b", str(tmp / "gen_b"), gallery=g, model=tiny_model)
    assert "threshold" in out.stdout and "5 support images" in out.stderr  # below the recommended 20
    run("enroll", "gen-b", str(tmp / "gen_b"), gallery=g, model=tiny_model, expect=2)  # exists
    info = json.loads(run("info", "--json", gallery=g, model=tiny_model).stdout)
    assert [p["name"] for p in info["profiles"]] == ["gen-a", "gen-b"] and info["backend"] == "onnxruntime"
    assert info["rule"] == "pair"  # the tiny model is not calibrated
    run("info", "--rule", "prototype", gallery=g, model=tiny_model, expect=2)  # clear refusal
    text = run("info", gallery=g, model=tiny_model).stdout
    assert "gen-a" in text and "backend" in text and "rule" in text

    out = run("verify", str(q), "--against", "gen-a", "--json", gallery=g, model=tiny_model, expect=1)
    rows = json.loads(out.stdout)
    assert len(rows) == 5
    broken = [r for r in rows if r["source"].endswith("broken.png")][0]
    assert broken["score"] is None and "unreadable" in broken["error"]
    assert all(0 <= r["score"] <= 1 for r in rows if r["error"] is None)

    out = run("attribute", str(q), gallery=g, model=tiny_model, expect=1)
    assert "broken.png" in out.stdout and "threshold" in out.stdout
    rows = json.loads(run("attribute", str(q), "--json", gallery=g, model=tiny_model, expect=1).stdout)
    assert {r["label"] for r in rows} <= {"gen-a", "gen-b", "unknown", "error"}

    out = run("attribute", str(q), "--threshold", "profile", gallery=g, model=tiny_model, expect=1)
    assert "per profile (gen-a" in out.stdout
    run("attribute", str(q), "--threshold", "bogus", gallery=g, model=tiny_model, expect=2)
    info = json.loads(run("info", "--json", "--ambiguity-margin", "0.3", "--profile-quantile", "0.1",
                          gallery=g, model=tiny_model).stdout)
    assert info["ambiguity_margin"] == 0.3 and info["profile_quantile"] == 0.1
    for bad in (("--ambiguity-margin", "2"), ("--profile-quantile", "1")):
        err = run("attribute", str(q), *bad, gallery=g, model=tiny_model, expect=2).stderr
        assert bad[0] in err or "ambiguity margin" in err

    run("verify", str(q), "--against", "nobody", gallery=g, model=tiny_model, expect=2)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_scan_is_resumable(tiny_model, folders, fmt):
    tmp, q = folders
    g = tmp / "gallery.db"
    run("enroll", "gen-a", str(tmp / "gen_a"), gallery=g, model=tiny_model)
    res = tmp / f"results.{fmt}"
    run("scan", str(q), "-o", str(res), "--no-progress", gallery=g, model=tiny_model, expect=1)

    def rows():
        if fmt == "csv":
            with open(res, newline="") as f:
                return list(csv.DictReader(f))
        return [json.loads(l) for l in res.read_text().splitlines()]

    first = rows()
    assert len(first) == 5 and sum(1 for r in first if r["error"]) == 1
    # simulate an interrupted scan: drop the last two rows, rerun, nothing duplicated or lost
    lines = res.read_text().splitlines(keepends=True)
    res.write_text("".join(lines[:-2]))
    out = run("scan", str(q), "-o", str(res), "--no-progress", "--json", gallery=g,
              model=tiny_model, expect=0 if "broken" not in "".join(lines[-2:]) else 1)
    assert json.loads(out.stdout)["written"] == 2
    again = rows()
    assert sorted(r["source"] for r in again) == sorted(r["source"] for r in first)


def test_cli_reports_provenance_beside_the_verdict(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image, PngImagePlugin
    make_images(tmp_path / "gen", 4, 40)
    q = tmp_path / "q"
    q.mkdir()
    rng = np.random.default_rng(3)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a photo\nSteps: 20, Sampler: Euler a, Model: gen")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(q / "tagged.png", pnginfo=info)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(q / "plain.png")
    g = tmp_path / "g.db"
    run("enroll", "gen", str(tmp_path / "gen"), gallery=g, model=tiny_model)
    out = tmp_path / "scan.jsonl"
    res = run("scan", str(q), "-o", str(out), "--summary", "--json", "--no-progress", gallery=g,
              model=tiny_model)
    summary = json.loads(res.stdout)["provenance"]
    assert summary["declared"] == 1 and summary["agree"] + summary["disagree"] <= 1
    rows = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["plain.png"]["provenance"] == {}
    assert "Stable Diffusion" in rows["tagged.png"]["provenance"]["generator"]
    table = run("attribute", str(q), gallery=g, model=tiny_model).stdout
    assert "declared" in table and "Stable Diffusion" in table


def test_cli_enroll_add_and_whiten(tiny_model, folders, tmp_path):
    from ofa_sdk.weights import update_meta
    import shutil
    tmp, q = folders
    g = tmp / "gallery.db"
    model = tmp_path / "gauss.safetensors"
    shutil.copy(tiny_model, model)
    update_meta(model, {"calibration": {"gaussian": {"a": -2.0, "b": 0.5, "prior_var": 0.01}}})
    run("enroll", "gen-a", str(tmp / "gen_a"), "--limit", "3", gallery=g, model=model)
    out = json.loads(run("enroll", "gen-a", str(tmp / "gen_a"), "--add", "--json",
                         gallery=g, model=model).stdout)
    assert out["support"] == 8                          # 3 + 5 images, one crop each
    run("enroll", "gen-b", str(tmp / "gen_b"), gallery=g, model=model)
    info = json.loads(run("info", "--json", "--whiten", "gallery", gallery=g, model=model).stdout)
    assert info["rule"] == "gaussian"
    rows = json.loads(run("attribute", str(q), "--json", "--whiten", "gallery",
                          gallery=g, model=model, expect=1).stdout)
    assert {r["label"] for r in rows} <= {"gen-a", "gen-b", "unknown", "error"}
    run("info", "--rule", "pair", "--whiten", "gallery", gallery=g, model=model, expect=2)


def test_cli_enroll_reencodes_at_a_jpeg_quality(tiny_model, folders):
    tmp, _ = folders
    g = tmp / "gallery.db"
    run("enroll", "gen-a", str(tmp / "gen_a"), "--jpeg-quality", "90", gallery=g, model=tiny_model)
    from ofa_sdk.gallery import Gallery
    assert Gallery(g).get("gen-a").metadata["jpeg_quality"] == 90
    err = run("enroll", "gen-a", str(tmp / "gen_a"), "--add", gallery=g, model=tiny_model, expect=2).stderr
    assert "jpeg_quality=90" in err
    err = run("enroll", "gen-b", str(tmp / "gen_b"), "--jpeg-quality", "0", gallery=g, model=tiny_model,
              expect=2).stderr
    assert "JPEG quality" in err


def test_cli_enroll_sets_the_variants(tiny_model, folders):
    tmp, _ = folders
    g = tmp / "gallery.db"
    run("enroll", "gen-a", str(tmp / "gen_a"), "--jpeg-variants", "none", "--rescale-variants",
        "none", gallery=g, model=tiny_model)
    run("enroll", "gen-b", str(tmp / "gen_b"), "--jpeg-variants", "80", "--rescale-variants", "0.5",
        gallery=g, model=tiny_model)
    run("enroll", "gen-c", str(tmp / "gen_b"), gallery=g, model=tiny_model)
    from ofa_sdk.attributor import JPEG_VARIANTS, RESCALE_VARIANTS
    from ofa_sdk.gallery import Gallery
    meta = {n: Gallery(g).get(n).metadata for n in ("gen-a", "gen-b", "gen-c")}
    asked = {n: (m["jpeg_variants"], m["rescale_variants"]) for n, m in meta.items()}
    assert asked == {"gen-a": ([], []), "gen-b": ([80], [0.5]),
                     "gen-c": (list(JPEG_VARIANTS), list(RESCALE_VARIANTS))}
    # made: the resized ones of these 40 px images would fall below the crop
    assert set(Gallery(g).get("gen-b").variants) == {(1.0, 80)}
    assert Gallery(g).get("gen-a").variants == {}
    err = run("enroll", "gen-d", str(tmp / "gen_b"), "--jpeg-variants", "high", gallery=g,
              model=tiny_model, expect=2).stderr
    assert "--jpeg-variants takes JPEG qualities (integers in [1, 100]) or 'none'" in err
    err = run("enroll", "gen-d", str(tmp / "gen_b"), "--rescale-variants", "big", gallery=g,
              model=tiny_model, expect=2).stderr
    assert "--rescale-variants takes resize factors (numbers in (0, 4]) or 'none'" in err
    run("enroll", "gen-e", str(tmp / "gen_b"), "--rescale-variants", "1.2", "--resize-kernel", "box",
        gallery=g, model=tiny_model)
    assert Gallery(g).get("gen-e").metadata["resize_kernel"] == "box"
    err = run("enroll", "gen-f", str(tmp / "gen_b"), "--resize-kernel", "nearest", gallery=g,
              model=tiny_model, expect=2).stderr
    assert "--resize-kernel: invalid choice: 'nearest'" in err
