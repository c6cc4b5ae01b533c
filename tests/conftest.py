import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Kernel tests: without CUDA, Triton kernels run in its interpreter on CPU tensors; the variable
# must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """Exported engine graphs go to a folder of this test session, not the user's cache."""
    old = os.environ.get("OFA_SDK_CACHE")
    os.environ["OFA_SDK_CACHE"] = str(tmp_path_factory.mktemp("ofa-cache"))
    yield
    if old is None:
        os.environ.pop("OFA_SDK_CACHE")
    else:
        os.environ["OFA_SDK_CACHE"] = old


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small random-weight model file: exercises the API mechanics, not attribution quality."""
    from ofa_sdk.testing import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make_images(folder, n, seed, size=40, kind="noise"):
    """Small synthetic PNGs; 'kind' selects a family so two folders differ statistically."""
    from ofa_sdk.evaluation.synthetic import write_images
    return write_images(folder, n, seed, size, kind)


def enrolled_gallery(folder, model, profiles):
    """A gallery file ``folder/gallery.db`` with one profile per (name, kind) of ``profiles``,
    each enrolled from its own folder of synthetic images (``folder/gen_<i>``)."""
    from ofa_sdk import Attributor
    g = folder / "gallery.db"
    att = Attributor(model=model, backend="torch", gallery=g)
    for i, (name, kind, n) in enumerate(profiles):
        make_images(folder / f"gen_{i}", n, 10 + i, kind=kind)
        att.enroll(name, folder / f"gen_{i}")
    att.gallery.close()
    return g


def refused_model_files(folder, cases):
    """Write each of ``cases`` (name -> bytes) as ``folder/<name>.safetensors``; each must be
    refused by ``load_model`` with a ValueError naming the file. Returns {name: path}."""
    from ofa_sdk.weights import load_model
    paths = {}
    for name, blob in cases.items():
        bad = paths[name] = folder / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ValueError) as e:
            load_model(bad)
        assert str(bad) in str(e.value), (name, str(e.value))
    return paths


def wait_for(cond, timeout=60.0, what="condition"):
    """Poll ``cond`` until it is true; fail naming ``what`` after ``timeout`` seconds (tests that
    watch another process reach a point, whatever the machine's load)."""
    import time
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def gauss_model(tiny_model, tmp_path):
    """The tiny model calibrated for the Gaussian rule (its default rule then) and the
    prototype rule."""
    import shutil
    from ofa_sdk.weights import update_meta
    path = tmp_path / "gauss.safetensors"
    shutil.copy(tiny_model, path)
    update_meta(path, {"calibration": {"prototype": {"a": 8.0, "b": -4.0},
                                       "gaussian": {"a": -3.0, "b": 1.0, "prior_var": 0.01}}})
    return path
