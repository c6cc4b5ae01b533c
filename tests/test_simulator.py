import json

import pytest
import torch

from ofa_sdk.config import SimulatorConfig, compact, paper
from ofa_sdk.models.simulator import (Architecture, FingerprintSimulator, level_variants,
                                      sample_architecture, space_size)


def test_space_size_matches_paper():
    assert level_variants(2) == 11_880
    assert space_size((1, 2, 3), 2) == 1_676_817_818_280


def test_sampling_is_deterministic_and_replayable():
    a = [sample_architecture(7).id for _ in range(3)]
    assert len(set(a)) == 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = [sample_architecture(g1) for _ in range(20)]
    s2 = [sample_architecture(g2) for _ in range(20)]
    assert s1 == s2
    assert len({x.id for x in s1}) > 15  # the generator advances


def test_id_is_bijective_and_serialisable():
    g = torch.Generator().manual_seed(1)
    n = space_size()
    for arch in [sample_architecture(g) for _ in range(200)]:
        assert 0 <= arch.id < n
        assert Architecture.from_id(arch.id) == arch
        assert Architecture.from_json(arch.to_json()) == arch
        json.loads(arch.to_json())
    for i in [0, 1, 11_879, 11_880, 11_880 + 11_880 ** 2 - 1, 11_880 + 11_880 ** 2, n - 1]:
        assert Architecture.from_id(i).id == i
    with pytest.raises(ValueError):
        Architecture.from_id(n)


def test_every_start_scale_and_upsampler_drawn():
    g = torch.Generator().manual_seed(0)
    archs = [sample_architecture(g) for _ in range(300)]
    assert {a.start_scale for a in archs} == {1, 2, 3}
    assert {lv.up for a in archs for lv in a.levels} == {0, 1, 2, 3}
    assert {len(lv.cells) for a in archs for lv in a.levels} == {1, 2}


@pytest.mark.parametrize("mode", ["weight", "output"])
def test_simulator_shapes_and_replay(mode):
    cfg = SimulatorConfig(enc_channels=(8, 16, 24), stem_channels=8, router_hidden=8,
                          mok_mode=mode)
    torch.manual_seed(0)
    sim = FingerprintSimulator(cfg)
    x = torch.rand(2, 3, 32, 32)
    for s in (1, 2, 3):
        arch = next(a for a in (sample_architecture(i) for i in range(100)) if a.start_scale == s)
        y = sim(x, arch)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert torch.equal(y, sim(x, Architecture.from_id(arch.id)))


def test_simulator_gradients_reach_used_slots():
    cfg = SimulatorConfig(enc_channels=(8, 16, 24), stem_channels=8, router_hidden=8)
    sim = FingerprintSimulator(cfg)
    arch = next(a for a in (sample_architecture(i) for i in range(200))
                if a.start_scale == 3 and all(len(l.cells) == 2 for l in a.levels))
    sim(torch.rand(2, 3, 32, 32), arch).square().mean().backward()
    assert sim.encoder.stem.weight.grad.abs().sum() > 0
    for i in range(3):
        lvl = sim.decoder.levels[i]
        for cell in lvl.cells:
            assert cell.conv.weight.grad is not None and cell.conv.weight.grad.abs().sum() > 0
            assert cell.conv.router.fc2.weight.grad.abs().sum() > 0


def test_simulator_rejects_bad_sides():
    sim = FingerprintSimulator(SimulatorConfig(enc_channels=(8, 16, 24), stem_channels=8,
                                               router_hidden=8))
    with pytest.raises(ValueError, match="multiples of 8"):
        sim(torch.rand(1, 3, 30, 32))


def test_configs_roundtrip_and_paper_values():
    p = paper()
    assert p.simulator.enc_channels == (64, 128, 256) and p.simulator.num_kernels == 4
    assert p.denoiser.depth == 17 and p.denoiser.width == 64 and not p.denoiser.padding
    assert p.extractor.layers == (3, 4, 6, 3) and p.extractor.dim == 128
    assert p.loss.tau == 0.02 and p.loss.bank_size == 1024
    assert (p.stage2.n, p.stage2.m, p.stage2.lr) == (16, 8, 1e-4)
    for c in (p, compact()):
        assert type(c).from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert compact().replace(**{"stage2.steps": 5}).stage2.steps == 5
    with pytest.raises(KeyError):
        compact().replace(**{"stage2.nope": 5})


def test_stored_configs_with_removed_training_fields_load(tmp_path):
    """A model file or checkpoint written before a training option was removed names its fields
    (as those of stage 2 at git tag experiments-twins-both-residual do, at their off values): it
    loads, the fields dropped, with the same model id. The training schedule's own constants are
    config fields with the values the stages used. An unknown field of a section that shapes
    inference is refused."""
    from safetensors.torch import load_file
    from ofa_sdk.config import OFAConfig
    from ofa_sdk.testing import write_tiny_model
    from ofa_sdk.weights import load_model, read_meta, write_file
    c = compact()
    assert (c.data.holdout, c.stage1.grad_clip, c.stage2.grad_clip, c.stage2.warmup) == (0.15, 1.0, 5.0, 0.05)
    old = c.to_dict()
    old["stage2"].update(retired_p=0.0, retired_range=[0.05, 0.25], retired_kind="perturbed")
    old["loss"]["retired"] = 1.0
    del old["data"]                                   # files older than the section
    assert OFAConfig.from_dict(old) == c
    path = write_tiny_model(tmp_path / "now.safetensors")
    meta = read_meta(path)
    meta["config"]["stage2"]["retired_p"] = 0.0
    del meta["config"]["data"]
    write_file(tmp_path / "old.safetensors", load_file(str(path)), meta)
    assert load_model(tmp_path / "old.safetensors").model_id == load_model(path).model_id
    bad = c.to_dict()
    bad["spectrum"]["retired"] = 1
    with pytest.raises(KeyError, match="retired"):
        OFAConfig.from_dict(bad)

