import pytest
import torch

from ofa_sdk.config import DenoiserConfig, ExtractorConfig, compact, paper
from ofa_sdk.models import DnCNN, OFAModel, PairHead, RealHead, ResNet
from ofa_sdk.models.mokconv import (MoKConv, mokconv_output_mixing, mokconv_weight_mixing)
from ofa_sdk.models.spectrum import log_spectrum, log_spectrum_ref


def test_mokconv_paths_agree_forward_and_backward():
    torch.manual_seed(0)
    m = MoKConv(5, 7, num_kernels=4, router_hidden=6).double()
    with torch.no_grad():  # make coefficients clearly per-sample and per-channel
        m.router.fc2.weight.normal_()
    x = torch.randn(3, 5, 11, 9, dtype=torch.double)
    grads = {}
    for mode in ("weight", "output"):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = m(xi, mode=mode)
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.double).view_as(y)).sum().backward()
        grads[mode] = (y.detach(), xi.grad, m.weight.grad.clone(), m.bias.grad.clone(),
                       m.router.fc2.weight.grad.clone())
    for a, b in zip(grads["weight"], grads["output"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_mokconv_is_per_sample():
    torch.manual_seed(0)
    coef = torch.randn(2, 3, 4)
    w, b = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4)
    h = torch.randn(2, 2, 6, 6)
    y = mokconv_weight_mixing(h, coef, w, b)
    y0 = mokconv_weight_mixing(h[:1], coef[:1], w, b)
    torch.testing.assert_close(y[:1], y0)
    torch.testing.assert_close(y, mokconv_output_mixing(h, coef, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (7, 10), (9, 5), (1, 4)])
def test_log_spectrum_equals_fft2_definition(hw):
    r = torch.randn(2, 3, *hw)
    torch.testing.assert_close(log_spectrum(r), log_spectrum_ref(r), rtol=1e-5, atol=1e-5)


def test_log_spectrum_under_autocast_is_float32():
    r = torch.randn(1, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = log_spectrum(r.bfloat16())
    assert s.dtype == torch.float32


def test_dncnn_unpadded_shrinks_paper_size():
    d = DnCNN(paper().denoiser)
    n = sum(p.numel() for p in d.parameters())
    assert 550_000 < n < 570_000  # ~558k as Corvi's
    assert d.output_size(256) == 222
    small = DnCNN(DenoiserConfig(depth=4, width=8))
    y = small(torch.rand(2, 3, 20, 24))
    assert y.shape == (2, 3, 12, 16)
    padded = DnCNN(DenoiserConfig(depth=4, width=8, padding=True))
    assert padded(torch.rand(1, 3, 20, 24)).shape == (1, 3, 20, 24)
    with pytest.raises(ValueError, match="too small"):
        small(torch.rand(1, 3, 8, 8))


def test_resnet50_and_compact_shapes():
    r50 = ResNet(paper().extractor)
    n = sum(p.numel() for p in r50.parameters())
    assert 23_000_000 < n < 24_500_000  # ResNet-50 trunk + a 2048->128 fc
    r50.eval()
    assert r50(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    small = ResNet(ExtractorConfig(block="basic", layers=(1, 2), width=8, dim=16))
    assert small(torch.randn(3, 3, 33, 47)).shape == (3, 16)


def test_heads_split_first_layer_matches_concat():
    torch.manual_seed(0)
    g = PairHead(16, (12, 10))
    zs, zq = torch.randn(5, 16), torch.randn(3, 16)
    full = torch.stack([g(zs, zq[i].expand(5, -1)) for i in range(3)])
    fast = g.pair_logits(g.query_part(zq), g.support_part(zs))
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert RealHead(16)(zq).shape == (3,)


def test_full_model_gradient_flow_and_normalisation():
    cfg = compact().replace(**{"denoiser.depth": 3, "denoiser.width": 8, "spectrum.residual": "denoiser",
                               "extractor.width": 8, "extractor.layers": (1, 1)})
    m = OFAModel(cfg)
    x = torch.rand(4, 3, 40, 40)
    phi, z = m.embed(x)
    assert phi.shape == (4, 128) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    loss = m.pair_head(z[:2], z[2:]).sum() + m.real_head(z).sum()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.denoiser.body[0].weight.grad.abs().sum() > 0


def test_highpass_residual_option():
    """spectrum.residual="highpass" gives exactly the spectrum the non-learned baseline uses; the
    compact recipe uses it, the paper's the denoiser, and stored configs without the field load
    as denoiser models."""
    import dataclasses
    import numpy as np
    from ofa_sdk.config import OFAConfig, paper
    from ofa_sdk.evaluation.runner import highpass_spectrum
    assert paper().spectrum.residual == "denoiser"
    hp = compact()
    assert hp.spectrum.residual == "highpass"
    assert OFAConfig.from_dict(hp.to_dict()).spectrum.residual == "highpass"
    old = hp.to_dict()
    del old["spectrum"]["residual"]
    assert OFAConfig.from_dict(old).spectrum.residual == "denoiser"
    crops = np.random.default_rng(0).integers(0, 256, (2, 20, 18, 3), dtype=np.uint8)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        spec = OFAModel(hp).eval().spectrum(x).numpy()
    assert np.allclose(spec.mean(0).ravel(), highpass_spectrum(crops), atol=1e-4)
    bad = dataclasses.replace(hp, spectrum=dataclasses.replace(hp.spectrum, residual="sobel"))
    with pytest.raises(ValueError, match="residual"):
        OFAModel(bad)
