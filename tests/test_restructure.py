"""The seams set by the restructure: one engine contract, rule objects, snapshots, model ids.

``test_shipped_model_is_pinned`` holds the shipped model's fingerprints and scores to the values
pinned for the same inputs (tests/data/pinned_shipped.json; first made by the pre-restructure
code, commit c034ee4): moving code between modules must not move a number. When the shipped
model itself changes, the file is remade from the new model with ``python
tests/test_restructure.py --repin`` (and the commit says so).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.backends import Engine, ENGINES, register, select_engine
from ofa_sdk.evaluation.support import support_scores

PINNED = Path(__file__).parent / "data" / "pinned_shipped.json"


def pinned_images():
    """The inputs the pinned values were computed on (seeded, 128x128, 2x upscaled noise)."""
    rng = np.random.default_rng(1234)
    out = []
    for i in range(6):
        base = rng.integers(0, 256, (64 + 8 * i, 64 + 8 * i, 3)).astype(np.float64)
        a = np.kron(base, np.ones((2, 2, 1)))[:128, :128]
        a = a + rng.normal(0, 4 + i, a.shape)
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("crops", [1, 4])
def test_shipped_model_is_pinned(crops):
    from ofa_sdk.kernels import dispatch
    want = json.loads(PINNED.read_text())
    with dispatch.reference():      # the reference path, as the pinned values were made
        got = pinned_values(crops)
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k], atol=1e-6, rtol=0, err_msg=k)


def pinned_values(crops) -> dict:
    """Everything pinned at ``crops``: fingerprints, support scores of both rules, attributions
    and per-profile thresholds of both rules, on :func:`pinned_images`."""
    ims = pinned_images()
    att = Attributor(crops=crops, backend="torch")     # the reference engine, as pinned
    out = {f"fingerprint_crops{crops}": att.fingerprint(ims).tolist()}
    zs = [e.z for e in att.embed_stream(ims)]
    sup = np.concatenate(zs[:3])
    for rule in ("prototype", "pair"):
        out[f"scores_{rule}_crops{crops}"] = np.asarray(support_scores(att, zs[3:], sup, rule=rule)).tolist()
    for rule, suffix in (("prototype", ""), ("pair", "_pair")):
        a = Attributor(model=att.bundle, crops=crops, rule=rule, backend="torch")
        a.enroll("a", ims[:3])
        a.enroll("b", ims[3:])
        got = [[r.scores["a"], r.scores["b"]] for r in a.attribute(ims)]
        np.testing.assert_allclose(a.scores(ims), got, atol=1e-6, rtol=0)   # one path, two calls
        out[f"attribute{suffix}_crops{crops}"] = got
        out[f"threshold{suffix}_crops{crops}"] = [a.profile_threshold("a"), a.profile_threshold("b")]
    return out


class WrappedTorchEngine:
    """A new engine in one class: it satisfies the Protocol by delegating to the reference and
    counting calls, which is all an engine has to provide."""
    name = "wrapped"

    def __init__(self, bundle, device=None):
        from ofa_sdk.backends.torch import TorchEngine
        self.inner = TorchEngine(bundle, device)
        self.device, self.model_id = self.inner.device, self.inner.model_id
        self.calls = 0

    def embed(self, crops):
        self.calls += 1
        return self.inner.embed(crops)

    def embed_spectra(self, crops):
        self.calls += 1
        return self.inner.embed_spectra(crops)


def test_a_new_engine_is_one_class_against_the_protocol(tiny_model, tmp_path):
    register("wrapped", f"{__name__}:WrappedTorchEngine")
    try:
        ref = Attributor(model=tiny_model, backend="torch")
        att = Attributor(model=ref.bundle, backend="wrapped", gallery=ref.gallery)
        assert att.backend == "wrapped" and isinstance(att.engine, Engine)
        a = make_images(tmp_path / "a", 4, 1)
        np.testing.assert_array_equal(att.fingerprint(a), ref.fingerprint(a))
        att.enroll("gen", a[:3])
        np.testing.assert_array_equal(att.verify(a, "gen"), ref.verify(a, "gen"))
        assert att.engine.calls >= 2
    finally:
        ENGINES.pop("wrapped")


def test_engine_checks_its_input_and_never_moves_the_bundle(tiny_model):
    att = Attributor(model=tiny_model, backend="torch")
    with pytest.raises(ValueError, match="uint8 crops"):
        att.engine.embed(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 crops"):
        att.engine.embed(np.zeros((2, 31, 32, 3), np.uint8))
    params = {k: v.clone() for k, v in att.bundle.model.state_dict().items()}
    other = select_engine("torch", att.bundle, "cpu").engine
    other.embed(np.zeros((1, 32, 32, 3), np.uint8))
    for k, v in att.bundle.model.state_dict().items():
        assert v.device.type == "cpu" and v.equal(params[k])


def test_model_id_ignores_calibration_and_keeps_legacy_galleries(tiny_model, tmp_path):
    import shutil
    from ofa_sdk.gallery import Gallery
    from ofa_sdk.weights import file_id, load_model, update_meta
    path = tmp_path / "m.safetensors"
    shutil.copy(tiny_model, path)
    before = load_model(path)
    old_file_id = file_id(path)
    # a gallery enrolled before model ids covered only inference: the profile carries the file hash
    g = Gallery(tmp_path / "g.db")
    att = Attributor(model=before, gallery=g)
    prof = att.enroll("gen", make_images(tmp_path / "a", 3, 1))
    prof.model_id = old_file_id
    g.put(prof, overwrite=True)
    assert before.legacy_id == old_file_id and np.isfinite(att.verify(tmp_path / "a", "gen")).all()
    update_meta(path, {"calibration": {"prototype": {"a": 8.0, "b": -4.0}}})
    after = load_model(path)
    assert after.model_id == before.model_id and after.legacy_id != old_file_id


def test_pair_rule_prefilter(tiny_model):
    from ofa_sdk.scoring import PairHeadWeights, PairRule, unit
    from ofa_sdk.weights import load_model
    head = PairHeadWeights.from_module(load_model(tiny_model).model.pair_head)
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(12, 16)))
    supports = [unit(c + 0.2 * rng.normal(size=(6, 16))).astype(np.float32) for c in centres]
    queries = [unit(centres[i] + 0.2 * rng.normal(size=(2, 16))).astype(np.float32) for i in range(12)]
    exact = PairRule(head)
    full = exact.scores(exact.prepare(supports), queries)
    wide = PairRule(head, prefilter=12)                      # K >= P: exhaustive
    np.testing.assert_allclose(wide.scores(wide.prepare(supports), queries), full, atol=1e-6)
    pre = PairRule(head, prefilter=3)
    approx = pre.scores(pre.prepare(supports), queries)
    assert ((approx > 0).sum(1) <= 3).all()                  # only K profiles scored per image
    scored = approx > 0
    np.testing.assert_allclose(approx[scored], full[scored], atol=1e-6)


if __name__ == "__main__":
    import sys
    if sys.argv[1:] != ["--repin"]:
        sys.exit("usage: python tests/test_restructure.py --repin  (after the shipped model changed)")
    from ofa_sdk.kernels import dispatch
    with dispatch.reference():
        values = {k: v for c in (1, 4) for k, v in pinned_values(c).items()}
    PINNED.write_text(json.dumps(values))
    print(f"wrote {PINNED}")
