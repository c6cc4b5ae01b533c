import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk.evaluation import datasets
from ofa_sdk.evaluation.metrics import ccr_at_fpr, closed_set_accuracy, oscr, roc_auc, roc_auc_labels
from ofa_sdk.evaluation.protocol import image_to_model, split_support_query


def test_roc_auc_hand_cases():
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    # pos {0.8, 0.4}, neg {0.5, 0.1}: pairs won 3 of 4
    assert roc_auc([0.8, 0.4], [0.5, 0.1]) == 0.75
    # a tie counts half: pos {0.5}, neg {0.5, 0.2} -> (0.5 + 1) / 2
    assert roc_auc([0.5], [0.5, 0.2]) == 0.75
    with pytest.raises(ValueError):
        roc_auc([], [1.0])
    with pytest.raises(ValueError):
        roc_auc([np.nan], [1.0])


def test_roc_auc_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding creates ties
    assert roc_auc_labels(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_oscr_and_ccr_hand_cases():
    # known scores .9 (correct) .8 (wrong) .6 (correct); unknown .7 .5
    ks, kc, us = [0.9, 0.8, 0.6], [True, False, True], [0.7, 0.5]
    # thresholds .9 .8 .7 .6 .5 -> (fpr, ccr): (0,1/3) (0,1/3) (.5,1/3) (.5,2/3) (1,2/3)
    # area: from (0,0)->(0,1/3) 0; (0,1/3)->(.5,1/3): 1/6; (.5,1/3)->(.5,2/3): 0; ->(1,2/3): 1/3
    assert oscr(ks, kc, us) == pytest.approx(1 / 6 + 1 / 3)
    assert ccr_at_fpr(ks, kc, us, 0.0) == pytest.approx(1 / 3)
    assert ccr_at_fpr(ks, kc, us, 0.5) == pytest.approx(2 / 3)
    assert oscr([0.9], [True], [0.1]) == pytest.approx(1.0)
    assert closed_set_accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


def test_image_to_model_protocol_on_scores():
    split = split_support_query({"a": 10, "b": 10, "c": 10}, support=4, queries=6, seed=0, aligned=True)
    assert all(len(v) == 4 for v in split.support.values())
    assert np.array_equal(split.support["a"], split.support["b"])  # aligned content
    assert not set(split.support["a"]) & set(split.query["a"])
    # target a: perfect vs b, random-ish vs c
    def score(t, c):
        if t == c:
            return np.array([0.9, 0.8, 0.7])
        if (t, c) == ("a", "b"):
            return np.array([0.1, 0.2, 0.3])
        return np.array([0.85, 0.75, 0.1])
    res = image_to_model(["a", "b", "c"], split, score)
    assert res.matrix["a"]["b"] == 1.0
    assert res.matrix["a"]["c"] == pytest.approx(roc_auc([0.9, 0.8, 0.7], [0.85, 0.75, 0.1]))
    pa = res.per_target["a"]
    assert pa["auc_1v1_mean"] == pytest.approx((1.0 + res.matrix["a"]["c"]) / 2)
    assert pa["auc_1vrest"] == pytest.approx(roc_auc([0.9, 0.8, 0.7], [0.1, 0.2, 0.3, 0.85, 0.75, 0.1]))


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_layouts(tmp_path):
    dm = tmp_path / "dm"
    for g in ("biggan", "ldm"):
        for i in range(2):
            _touch(dm / g / f"{i}.png")
    assert sorted(datasets.discover(dm)) == ["biggan", "ldm"]
    aigc = tmp_path / "aigc" / "test"
    for p in ("sdxl/0_real/a.png", "sdxl/1_fake/a.png", "gan/cat/0_real/a.jpg", "gan/cat/1_fake/b.jpg"):
        _touch(aigc / p)
    assert sorted(datasets.discover(aigc)) == ["gan/cat/0_real", "gan/cat/1_fake", "sdxl/0_real", "sdxl/1_fake"]
    assert sorted(datasets.discover(aigc, exclude_real=True)) == ["gan/cat/1_fake", "sdxl/1_fake"]
    gi = tmp_path / "genimage"
    for p in ("ADM/imagenet_ai_0508_adm/train/ai/a.png", "ADM/imagenet_ai_0508_adm/val/ai/a.png",
              "ADM/imagenet_ai_0508_adm/val/nature/a.JPEG"):
        _touch(gi / p)
    assert sorted(datasets.discover(gi, include="/val/")) == ["ADM/imagenet_ai_0508_adm/val/ai",
                                                              "ADM/imagenet_ai_0508_adm/val/nature"]
    ann = tmp_path / "osma.txt"
    ann.write_text("# comment\nimgs/a.png\tstylegan\nimgs/b.png\tstylegan\n/abs/c.png\tproGAN\n\n")
    cl = datasets.read_annotations(ann)
    assert sorted(cl) == ["proGAN", "stylegan"] and cl["stylegan"][0] == tmp_path / "imgs/a.png"
    bad = tmp_path / "bad.txt"
    bad.write_text("no tab here\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        datasets.read_annotations(bad)


def test_eval_and_show_cli(tiny_model, tmp_path):
    root = tmp_path / "bench"
    make_images(root / "gen_a", 8, 20, kind="noise")
    make_images(root / "gen_b", 8, 21, kind="blocky")
    make_images(root / "gen_c", 8, 22, kind="noise", size=48)
    (root / "gen_c" / "zero.png").write_bytes(b"")
    (root / "gen_c" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    g = tmp_path / "g.db"
    base = ["--gallery", str(g), "--model", str(tiny_model)]
    cmd = [sys.executable, "-m", "ofa_sdk.cli"]
    out = subprocess.run(cmd + ["eval", str(root), "--support", "3", "--queries", "4", "--json",
                                "--matrix", str(tmp_path / "m.png")] + base, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["ours"]["per_target"]) == {"gen_a", "gen_b", "gen_c"}
    assert r["counts"]["gen_c"] == 8 and len(r["skipped"]["gen_c"]) == 2
    assert 0 <= r["ours"]["mean_auc_1v1"] <= 1 and "baseline" in r
    assert 0 <= r["baseline_highpass"]["mean_auc_1v1"] <= 1
    assert (tmp_path / "m.png").stat().st_size > 0
    out = subprocess.run(cmd + ["eval", str(root), "--support", "3", "--queries", "4", "--jpeg", "90"] + base,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "1-vs-rest" in out.stdout, out.stderr
    from PIL import Image
    out = subprocess.run(cmd + ["show", str(root / "gen_b"), "-o", str(tmp_path / "s.png")] + base,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "s.png").size[0] > 32
    subprocess.run(cmd + ["enroll", "gb", str(root / "gen_b")] + base, check=True, capture_output=True)
    out = subprocess.run(cmd + ["show", "gb", "-o", str(tmp_path / "p.png")] + base, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(cmd + ["show", "nobody", "-o", str(tmp_path / "x.png")] + base, capture_output=True, text=True)
    assert out.returncode == 2 and "nobody" in out.stderr


def test_eval_cli_on_each_published_layout(tiny_model, tmp_path, capsys):
    """`ofa-sdk eval` end to end on tiny copies of the AIGCDetectBenchmark, GenImage and OSMA
    layouts (DMDetection is covered above)."""
    from ofa_sdk.cli import main
    aigc = tmp_path / "aigc" / "test"
    for i, leaf in enumerate(["sdxl/1_fake", "sdxl/0_real", "gan/car/1_fake"]):
        make_images(aigc / leaf, 6, 40 + i, kind="noise" if i % 2 else "blocky")
    gi = tmp_path / "genimage"
    for i, leaf in enumerate(["ADM/adm/val/ai", "ADM/adm/val/nature", "VQDM/vq/val/ai", "VQDM/vq/train/ai"]):
        make_images(gi / leaf, 6, 50 + i, kind="blocky" if i % 2 else "noise")
    osma = tmp_path / "osma"
    lines = []
    for i, label in enumerate(["stylegan", "biggan"]):
        for p in make_images(osma / "imgs" / label, 6, 60 + i):
            lines.append(f"imgs/{label}/{p.name}\t{label}")
    (osma / "test.txt").write_text("\n".join(lines) + "\n")
    base = ["--gallery", str(tmp_path / "g.db"), "--model", str(tiny_model), "--support", "2",
            "--queries", "3", "--json"]
    cases = [([str(aigc), "--exclude-real"], {"sdxl/1_fake", "gan/car/1_fake"}),
             ([str(gi), "--include", "/val/"], {"ADM/adm/val/ai", "ADM/adm/val/nature", "VQDM/vq/val/ai"}),
             ([str(osma), "--annotations", str(osma / "test.txt")], {"stylegan", "biggan"})]
    for args, expected in cases:
        assert main(["eval", *args, *base]) == 0
        r = json.loads(capsys.readouterr().out)
        assert set(r["ours"]["per_target"]) == expected
        for v in r["ours"]["per_target"].values():
            assert v["support"] == 2 and v["queries"] == 3 and 0 <= v["auc_1v1_mean"] <= 1


def test_highpass_spectrum_by_hand():
    from ofa_sdk.evaluation.runner import highpass_spectrum
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    want = []
    for c in crops.astype(np.float64):
        per_channel = []
        for ch in range(3):
            x = c[..., ch]
            r = np.zeros((7, 9))
            for i in range(1, 8):
                for j in range(1, 10):
                    r[i - 1, j - 1] = 4 * x[i, j] - x[i - 1, j] - x[i + 1, j] - x[i, j - 1] - x[i, j + 1]
            per_channel.append(np.log1p(np.abs(np.fft.fft2(r))))
        want.append(per_channel)
    assert np.allclose(highpass_spectrum(crops), np.mean(want, 0).ravel(), atol=1e-4)
    flat = np.full((1, 9, 11, 3), 77, np.uint8)   # a constant image has no high-pass content
    assert np.allclose(highpass_spectrum(flat), 0)


def test_embed_items_keeps_highpass_spectra_aligned(tiny_model, tmp_path):
    """A bad item in the middle drops out of every list at once."""
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items, highpass_spectrum
    from ofa_sdk.images import make_crops, to_rgb
    good = make_images(tmp_path / "g", 3, 5, kind="noise")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    att = Attributor(model=tiny_model, crops=2)
    items = [good[0], bad, good[1], good[2]]
    for q in (None, 90):
        e = embed_items(att, items, q, True, highpass=True)
        assert len(e.z) == len(e.spec) == len(e.highpass) == 3 and len(e.skipped) == 1
        assert "bad.png" in e.skipped[0]
    e = embed_items(att, items, None, True, highpass=True)
    for path, hp in zip(good, e.highpass):
        assert np.allclose(hp, highpass_spectrum(make_crops(to_rgb(path), att.crop, 2)))


def test_eval_skips_a_class_with_one_image_instead_of_failing(tiny_model, tmp_path):
    """A benchmark folder with one stray image at its root: that 'class' is skipped with a
    warning, the others are evaluated (issue 16)."""
    import json
    import subprocess
    import sys
    from conftest import make_images
    root = tmp_path / "bench"
    make_images(root / "gen_a", 6, 1, kind="noise")
    make_images(root / "gen_b", 6, 2, kind="blocky")
    make_images(root, 1, 3, kind="noise")                     # the stray image
    out = subprocess.run([sys.executable, "-m", "ofa_sdk.cli", "eval", str(root), "--support", "3",
                          "--queries", "3", "--no-baseline", "--json", "--model", str(tiny_model),
                          "--gallery", str(tmp_path / "g.db"), "--backend", "torch", "--crops", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["skipped_classes"] == ["bench"] and "fewer than 2" in out.stderr
    assert set(res["counts"]) == {"gen_a", "gen_b"}
