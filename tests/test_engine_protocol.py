"""The engine contract (ofa_sdk.backends): a new engine is one class against the Protocol, and an
engine checks its input and never moves or changes the model it was given."""
import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.backends import Engine, ENGINES, register, select_engine


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
