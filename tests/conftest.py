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
