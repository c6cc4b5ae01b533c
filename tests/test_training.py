import json

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_sdk.testing import TINY
from ofa_sdk.config import compact
from ofa_sdk.training import common
from ofa_sdk.training.__main__ import main as train_main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        a = (rng.random((70 + i, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).save(d / f"p{i}.jpg", quality=90)
    (d / "sub").mkdir()
    Image.fromarray(np.zeros((70, 70), np.uint8)).save(d / "sub" / "gray.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


def _args(photos, out, steps):
    sets = [f"{k}={v!r}" if not isinstance(v, (int, float)) else f"{k}={v}" for k, v in TINY.items()]
    sets += ["stage0.steps=%d" % steps, "stage0.batch=2", "stage0.crop=24",
             "stage1.steps=%d" % steps, "stage1.batch=2", "stage1.crop=32",
             "stage2.steps=%d" % steps, "stage2.n=2", "stage2.m=2", "stage2.crop=32",
             "loss.bank_size=16"]
    out_args = ["--data", str(photos), "--out", str(out), "--quiet"]
    for s in sets:
        out_args += ["--set", s]
    return out_args


def test_unreadable_photos_are_skipped_and_counted(photos):
    with pytest.warns(UserWarning, match="broken.jpg"):
        ps = common.PhotoSet(photos, split="all")
    assert len(ps) == 13 and ps.skipped == 1
    b = ps.batch(3, 24, torch.Generator().manual_seed(0))
    assert b.shape == (3, 3, 24, 24) and 0 <= b.min() and b.max() <= 1


def test_all_stages_resume_deterministically_and_export(photos, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.warns(UserWarning):
        train = common.PhotoSet(photos, split="train")
    assert train_main(["all"] + _args(photos, a, 4)) == 0
    # b: each stage interrupted after step 2 (checkpointed), then resumed to 4
    for st in ("stage0", "stage1", "stage2"):
        assert train_main([st, "--stop-at", "2"] + _args(photos, b, 4)) == 0
        assert common.read_metadata(b / f"{st}.safetensors")["step"] == 2
        with open(b / f"{st}.jsonl", "a") as f:  # a step logged after the last checkpoint (a crash)
            f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
        assert train_main([st] + _args(photos, b, 4)) == 0
    for stage in ("stage0", "stage1", "stage2"):
        ta = common.load_file(str(a / f"{stage}.safetensors"))
        tb = common.load_file(str(b / f"{stage}.safetensors"))
        for k in ta:
            if k.startswith(("rng.", "optim.")) or "num_batches_tracked" in k:
                continue
            torch.testing.assert_close(ta[k], tb[k], msg=f"{stage} {k}")
        meta = common.read_metadata(a / f"{stage}.safetensors")
        assert meta["step"] == 4 and meta["config"]["name"] == "compact"
        assert meta["data"]["images"] == len(train) and meta["data"]["skipped"] == train.skipped
        for run in (a, b):  # b's log was cut at its checkpoint and continued: no duplicates
            log = [json.loads(l) for l in (run / f"{stage}.jsonl").read_text().splitlines()]
            assert [r["step"] for r in log] == [1, 2, 3, 4] and all("loss" in r for r in log)
    assert common.read_metadata(a / "stage1.safetensors")["perceptual"] == "ssim"
    assert "archs" in json.loads((a / "stage2.jsonl").read_text().splitlines()[0])
    # checkpoints are plain safetensors: no pickle anywhere
    assert (a / "stage2.safetensors").read_bytes()[:8] != b"\x80\x04\x95"
    dest = tmp_path / "model.safetensors"
    assert train_main(["export", "--out", str(a), "--dest", str(dest)]) == 0
    from ofa_sdk.weights import load_model
    bundle = load_model(dest)
    assert bundle.config.crop == 32 and len(bundle.model_id) == 16
    assert bundle.simulator()(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    from ofa_sdk import Attributor
    z = Attributor(model=bundle).fingerprint(np.zeros((40, 40, 3), np.uint8))
    assert z.shape == (1, 16)
    assert Attributor(model=bundle).rule.name == "pair"  # not calibrated yet
    # calibrate: the metadata gains (a, b), the tensors are untouched, the id is kept
    before = common.load_file(str(dest))
    assert train_main(["calibrate", "--data", str(photos), "--dest", str(dest), "--quiet",
                       "--rules", "prototype"]) == 0
    after = load_model(dest)
    cal = after.meta["calibration"]["prototype"]
    assert after.model_id == bundle.model_id and after.legacy_id != bundle.legacy_id
    assert np.isfinite([cal["a"], cal["b"]]).all() and cal["fitted_on"]["architectures"] == 32
    for k, v in common.load_file(str(dest)).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    att = Attributor(model=after)
    assert att.rule.name == "prototype" and att.info()["rule"] == "prototype"
    # the Gaussian rule's calibration is added beside it, the prototype's kept as it was; the
    # model then prefers the Gaussian rule
    assert train_main(["calibrate", "--data", str(photos), "--dest", str(dest), "--quiet",
                       "--rules", "gaussian"]) == 0
    both = load_model(dest)
    assert both.meta["calibration"]["prototype"] == cal
    g = both.meta["calibration"]["gaussian"]
    assert g["a"] < 0 and g["prior_var"] > 0 and g["fitted_on"]["input"] == "log(D^2/d)"
    assert Attributor(model=both).rule.name == "gaussian"
    from ofa_sdk.training import calibrate  # deterministic given the seed
    fits = [calibrate.fit(after, common.PhotoSet(photos), archs=4, support=3, queries=2, log=None)
            for _ in range(2)]
    assert fits[0] == fits[1]


def test_lpips_loads_user_weights(tmp_path):
    from safetensors.torch import save_file
    from ofa_sdk.training.perceptual import LPIPS, SSIMLoss, _CH, _VGG_CFG, make_perceptual
    torch.manual_seed(0)
    vgg, i, cin = {}, 0, 3
    for v in _VGG_CFG:
        if v == "M":
            i += 1
            continue
        vgg[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3) * 0.05
        vgg[f"features.{i}.bias"] = torch.zeros(v)
        cin, i = v, i + 2
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(_CH)}
    save_file(vgg, str(tmp_path / "vgg.safetensors"))
    torch.save(lin, tmp_path / "lin.pth")
    lp = make_perceptual("lpips", tmp_path / "vgg.safetensors", tmp_path / "lin.pth")
    assert isinstance(lp, LPIPS)
    x = torch.rand(2, 3, 32, 32)
    assert lp(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert lp(x, torch.rand(2, 3, 32, 32)).item() > 0
    with pytest.raises(ValueError, match="lpips-vgg"):
        make_perceptual("lpips")
    with pytest.raises(ValueError, match="stage1.perceptual=lpips"):   # weights, but SSIM chosen
        make_perceptual("ssim", tmp_path / "vgg.safetensors", tmp_path / "lin.pth")
    s = SSIMLoss()
    assert s(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert s(x, x.flip(-1)).item() > 0.05


def test_shipped_default_model_loads():
    from ofa_sdk.weights import DEFAULT_MODEL, load_default_model
    if not DEFAULT_MODEL.exists():
        pytest.fail("the package ships no default model")
    b = load_default_model()
    assert b.config.name == "compact" and DEFAULT_MODEL.stat().st_size < 8_000_000
    # trained to the end of its own recorded schedule (a full stage 2, or a fine-tune of another
    # shipped model), and its prototype score calibrated
    from ofa_sdk.weights import MODELS, as_bundle
    st = b.meta["training"]["stage2"]
    assert st["step"] == b.config.stage2.steps
    assert st["step"] >= compact().stage2.steps or \
        st.get("init") in {as_bundle(n).model_id for n in MODELS if MODELS[n] != DEFAULT_MODEL}
    assert b.meta["calibration"]["prototype"]["a"] > 0


def test_prefetcher_draws_ahead_on_its_own_thread_within_its_bound():
    import threading
    import time
    drawn, main = [], threading.get_ident()

    def draw(g):
        drawn.append((threading.get_ident(), time.monotonic()))
        return torch.rand(2, generator=g), "tag"
    loader = common.Prefetcher(draw, 0, "t", 3, 9, torch.device("cpu"), depth=2)
    got = []
    for step, (x, tag) in loader:
        time.sleep(0.05)                   # a slow training step: the loader fills its queue
        got.append(step)
        assert len(drawn) <= len(got) + 3   # at most depth queued plus one being drawn
    loader.close()
    assert got == [4, 5, 6, 7, 8, 9] and all(t != main for t, _ in drawn)
    # a step's data depends on (seed, stage, step) only: resuming draws the same
    again = dict(common.Prefetcher(draw, 0, "t", 6, 9, torch.device("cpu")))
    first = dict(common.Prefetcher(draw, 0, "t", 0, 9, torch.device("cpu")))
    for s in (7, 8, 9):
        assert torch.equal(again[s][0], first[s][0])
    assert not torch.equal(first[1][0], first[2][0])

    def broken(g):
        raise OSError("disk gone")
    with pytest.raises(RuntimeError, match="drawing the data failed: disk gone"):
        list(common.Prefetcher(broken, 0, "t", 0, 3, torch.device("cpu")))
    early = common.Prefetcher(draw, 0, "t", 0, 1000, torch.device("cpu"), depth=1)
    next(iter(early))
    early.close()                            # leaving early stops the thread
    assert not early.thread.is_alive()


def test_training_takes_a_device_and_bf16_autocast_runs_on_the_cpu(photos, tmp_path, monkeypatch):
    """The CUDA path's code (device, autocast, prefetching loader) run on the CPU: bf16 autocast
    is what ``--precision auto`` uses on CUDA; ``--precision bf16`` asks for it here."""
    from ofa_sdk.models import OFAModel
    seen = []
    extract = OFAModel.extract

    def recording(self, spec):
        seen.append((torch.is_autocast_enabled("cpu"), spec.dtype))
        return extract(self, spec)
    monkeypatch.setattr(OFAModel, "extract", recording)
    with pytest.warns(UserWarning):
        assert train_main(["all", "--device", "cpu", "--precision", "bf16"]
                          + _args(photos, tmp_path, 3)) == 0
    assert seen and all(on and dt == torch.float32 for on, dt in seen)   # spectra stay float32
    for stage in ("stage0", "stage1", "stage2"):
        log = [json.loads(l) for l in (tmp_path / f"{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert common.autocast(torch.device("cpu")).__class__.__name__ == "nullcontext"
    import warnings
    with warnings.catch_warnings():       # made on a host without CUDA: torch says so
        warnings.simplefilter("ignore")
        assert isinstance(common.autocast(torch.device("cuda")), torch.autocast)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train_main(["stage2", "--device", "cuda"] + _args(photos, tmp_path, 3))
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            common.train_device(0)
    assert common.train_device(None) == torch.device("cpu")


def test_resample_resizes_the_share_and_crops_the_rest():
    """A period-4 stripe pattern: a 0.5x box resize halves the period, a crop keeps it."""
    from ofa_sdk.training.stage2_extractor import _resample
    col = (np.arange(64) // 2 % 2).astype(np.float32)            # period 4 along x
    x = torch.from_numpy(np.broadcast_to(col, (4, 3, 64, 64)).copy())
    g = torch.Generator().manual_seed(0)
    whole = _resample(x, (0.5, "box"), 32, 1.0, g)
    none = _resample(x, (0.5, "box"), 32, 0.0, g)
    assert whole.shape == none.shape == (4, 3, 32, 32)

    def period(img):
        f = np.abs(np.fft.rfft(img[0].mean(0).numpy() - img[0].mean().item()))
        return 32 / np.argmax(f)
    assert all(period(whole[k:k + 1]) == 2 for k in range(4))
    assert all(period(none[k:k + 1]) == 4 for k in range(4))


def test_batches_with_resampling(photos):
    """Shapes and labels hold with every class resampled."""
    from ofa_sdk.models import FingerprintSimulator
    from ofa_sdk.training.stage2_extractor import REAL_LABEL, make_batch
    with pytest.warns(UserWarning):
        data = common.PhotoSet(photos, split="all")
    base = {**TINY, "stage2.n": 2, "stage2.m": 4, "stage2.crop": 32}
    on = compact().replace(**base, **{"stage2.resample_p": 1.0,
                                      "stage2.jpeg_class_p": 0.0, "stage2.jpeg_p": 0.0})
    sim = FingerprintSimulator(on.simulator).eval()
    x, y, ids = make_batch(sim, data, on, torch.Generator().manual_seed(0))
    assert x.shape == (18, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert (y == REAL_LABEL).sum() == 2 and len(ids) == 4


def test_a_fine_tune_starts_from_the_init_models_extractor(photos, tmp_path):
    from ofa_sdk.testing import write_tiny_model
    from ofa_sdk.weights import load_model
    model = write_tiny_model(tmp_path / "init.safetensors", seed=5)
    out = tmp_path / "ft"
    assert train_main(["stage0", "--stop-at", "1"] + _args(photos, out, 2)) == 0
    assert train_main(["stage1", "--stop-at", "1"] + _args(photos, out, 2)) == 0
    args = _args(photos, out, 2) + ["--set", "stage2.lr=0.0", "--init", str(model)]
    assert train_main(["stage2"] + args) == 0                      # lr 0: weights stay the init's
    init = load_model(model).model.extractor.state_dict()
    got = common.load_file(str(out / "stage2.safetensors"))
    convs = [k for k in init if k.endswith("weight")]
    assert convs and all(torch.equal(got[f"extractor.{k}"], init[k].float()) for k in convs)
    assert common.read_metadata(out / "stage2.safetensors")["init"] == load_model(model).model_id


def test_init_on_a_command_that_does_not_train_stage_2_is_an_error(photos, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["stage1", "--init", "shipped"] + _args(photos, tmp_path / "run", 2))
    assert "--init" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_batches_with_real_generators_in_the_loop(photos, tmp_path):
    """stage2.pretrained: the drawn generators are classes of their own below REAL_LABEL, half of
    each class's images the same content at the same crop position across the drawn ones."""
    from ofa_sdk.models import FingerprintSimulator
    from ofa_sdk.training.stage2_extractor import REAL_LABEL, make_batch, PretrainedGenerators
    rng = np.random.default_rng(0)
    content = rng.integers(0, 255, (5, 48, 48, 3), dtype=np.uint8)
    images = np.concatenate([(content // 3 + 60 * k).astype(np.uint8) for k in range(3)])   # no clipping
    path = tmp_path / "pretrained.npz"
    np.savez(path, images=images, label=np.repeat(np.arange(3), 5), content=np.tile(np.arange(5), 3))
    with pytest.warns(UserWarning):
        data = common.PhotoSet(photos, split="all")
    on = compact().replace(**TINY, **{"stage2.n": 2, "stage2.m": 2, "stage2.crop": 32, "stage2.pretrained": str(path),
                                      "stage2.pretrained_classes": 2, "stage2.jpeg_class_p": 0.0, "stage2.jpeg_p": 0.0})
    sim = FingerprintSimulator(on.simulator).eval()
    pretrained = PretrainedGenerators(str(path), 2, 32)
    x, y, _ = make_batch(sim, data, on, torch.Generator().manual_seed(0), pretrained)
    assert x.shape == (2 * 2 * 2 + 2 + 2 * 4, 3, 32, 32)
    gy = y[y < REAL_LABEL]
    assert len(gy) == 8 and len(set(gy.tolist())) == 2 and (y == REAL_LABEL).sum() == 2
    first, second = x[-8:-4] * 255, x[-4:] * 255
    ka, kb = -2 - gy[0].item(), -2 - gy[-1].item()            # the two generators drawn
    # the shared half: one content at one position, so the images differ by 60 (kb - ka) exactly
    shared = second[:2] - first[:2]
    assert torch.allclose(shared, torch.full_like(shared, 60.0 * (kb - ka)), atol=1e-3)
    other = second[2:] - first[2:]
    assert not torch.allclose(other, torch.full_like(other, 60.0 * (kb - ka)), atol=1e-3)


def test_pretrained_generators_refuse_a_bad_file(tmp_path):
    from ofa_sdk.training.stage2_extractor import PretrainedGenerators
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="bad.npz.*images, label and content"):
        PretrainedGenerators(str(bad), 2, 8)
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((2, 16, 16, 3), np.uint8), label=np.array([0, 1]), content=np.array([0, 0]))
    with pytest.raises(ValueError, match="crop 32"):
        PretrainedGenerators(str(small), 2, 32)
    with pytest.raises(ValueError, match="pretrained_classes = 3"):
        PretrainedGenerators(str(small), 3, 8)
