"""Model files (ofa_sdk.weights): the shipped hash manifest, tampered, truncated, corrupt and
garbage files refused with a clear error naming the file, the manifest kept fresh by the SDK's
writers, and model ids that ignore calibration and keep older galleries usable."""
import os
import shutil

import numpy as np
import pytest

from conftest import make_images, refused_model_files
from ofa_sdk import Attributor


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


def test_shipped_models_load_by_name_and_keep_their_galleries(tmp_path):
    """Every shipped model loads by its name, with its graphs beside it; the previous default
    keeps the galleries enrolled with it, which the new default refuses with a clear error."""
    from ofa_sdk.gallery import ModelMismatch
    from ofa_sdk.weights import DEFAULT_MODEL, DEFAULT_NAME, MODELS, as_bundle, read_manifest
    assert MODELS[DEFAULT_NAME] == DEFAULT_MODEL and set(read_manifest(DEFAULT_MODEL.parent)) == \
        {p.name for p in MODELS.values()}
    ids = {}
    for name, path in MODELS.items():
        b = as_bundle(name)
        ids[name] = b.model_id
        assert b.path == path and b.config.name == "compact"
        assert {"prototype", "gaussian"} <= set(b.meta["calibration"])
        assert sorted(p.name for p in (path.parent / "engines" / b.model_id).iterdir()) == \
            ["extractor.onnx", "residual.onnx"]
    assert len(set(ids.values())) == len(MODELS) and as_bundle().model_id == ids[DEFAULT_NAME]
    db = tmp_path / "g.db"
    old = [n for n in MODELS if n != DEFAULT_NAME][0]
    Attributor(model=old, gallery=db, backend="torch").enroll("a", make_images(tmp_path / "a", 3, 0, size=96))
    assert Attributor(model=old, gallery=db, backend="torch").verify(
        make_images(tmp_path / "q", 1, 1, size=96), "a").shape == (1,)
    with pytest.raises(ModelMismatch, match=ids[old]):
        Attributor(gallery=db, backend="torch").verify(make_images(tmp_path / "q", 1, 1, size=96), "a")


def test_a_vouched_model_builds_its_torch_module_on_first_use_and_others_at_load(tiny_model, tmp_path):
    """The shipped model (its manifest vouches for the bytes) loads without building the torch
    module, and its pair head is read from the stored tensors; a file no manifest vouches for is
    built at load, so one whose tensors do not fit its own configuration is refused there."""
    from safetensors.numpy import load_file

    from ofa_sdk.weights import DEFAULT_MODEL, load_model, read_meta, write_file
    b = load_model(DEFAULT_MODEL)
    assert b._model is None
    head = b.pair_head()
    module = b.model.pair_head                  # built now, from the same tensors
    assert b._model is not None
    np.testing.assert_array_equal(head.w_support, module.first.weight[:, :module.dim].numpy())
    np.testing.assert_array_equal(head.rest[-1][0], module.rest[-1].weight.numpy())
    assert len(head.rest) == len(b.config.heads.pair_hidden)
    import pickle
    again = pickle.loads(pickle.dumps(b))       # workers and Ray actors receive bundles
    assert again.model_id == b.model_id and again.model is not None
    meta = read_meta(tiny_model)
    meta["config"]["extractor"]["width"] = 2 * meta["config"]["extractor"]["width"]
    import torch
    tensors = {k: torch.from_numpy(v) for k, v in load_file(str(tiny_model)).items()}
    write_file(tmp_path / "wrong.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="does not hold a model of its own configuration") as e:
        load_model(tmp_path / "wrong.safetensors")
    assert "wrong.safetensors" in str(e.value)


def test_auto_skips_cuda_engines_on_a_host_without_an_nvidia_driver(tiny_model, monkeypatch, tmp_path):
    import sys

    from ofa_sdk import backends
    from ofa_sdk.backends import base
    from ofa_sdk.weights import load_model
    monkeypatch.setattr(base.os.path, "exists", lambda p: False)
    assert base.cuda_driver_absent() is False                    # torch is loaded: it answers
    monkeypatch.delitem(sys.modules, "torch")
    absent = base.cuda_driver_absent()
    monkeypatch.undo()
    assert absent is sys.platform.startswith("linux")
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "cuda_driver_absent", lambda: True)
    sel = backends.select_engine("auto", load_model(tiny_model))
    assert sel.engine.device == "cpu" and "no NVIDIA driver on this host" in sel.note


def test_the_model_id_is_the_same_from_numpy_and_torch_tensors(tiny_model, tmp_path):
    """Model files load into numpy; the id hashes the dtype names PyTorch gives, so ids of
    files loaded before (through torch) still match; a bfloat16 file loads through torch."""
    import torch
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_pt

    from ofa_sdk.weights import inference_id, load_model, read_meta, write_file
    config = read_meta(tiny_model)["config"]
    assert inference_id(load_np(str(tiny_model)), config) == inference_id(load_pt(str(tiny_model)), config) \
        == load_model(tiny_model).model_id
    bf = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_pt(str(tiny_model)).items()}
    write_file(tmp_path / "bf16.safetensors", bf, read_meta(tiny_model))
    b = load_model(tmp_path / "bf16.safetensors")
    assert b.model_id == inference_id(bf, config) and b.pair_head().w_query.dtype == np.float32
