"""Typed configuration: one home for every hyperparameter.

Two named configurations exist:

* ``paper``   -- every hyperparameter of the paper (Fei et al., AAAI 2026) and the authors'
  scripts as pinned down in METHOD.md. GPU scale.
* ``compact`` -- the CPU-trainable default that ships inside the package. Same method, smaller
  networks and crops; sized by measuring throughput on a 2-core CPU (docs/experiment-log.md,
  section 2).

Configs are frozen dataclasses; ``to_dict``/``from_dict`` round-trip them through JSON so a
checkpoint's metadata carries the exact configuration it was trained with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple


@dataclass(frozen=True)
class SimulatorConfig:
    """Fingerprint simulator: fixed encoder + stochastic decoder (paper Sec. 3.1, Eq. 1-4)."""
    enc_channels: Tuple[int, ...] = (64, 128, 256)  # C_1..C_L at H/2, H/4, H/8 (L = len)
    stem_channels: int = 32
    start_scales: Tuple[int, ...] = (1, 2, 3)  # s ~ Uniform over these
    v_max: int = 2                              # V_i ~ Uniform{1..v_max} VariStruct cells
    num_kernels: int = 4                        # K base kernels of MoKConv
    router_hidden: int = 64                     # router MLP hidden width
    mok_mode: str = "weight"                    # "weight" or "output" mixing (both exact)
    gn_groups: int = 8                          # GroupNorm groups (capped by channels)


@dataclass(frozen=True)
class DenoiserConfig:
    """DnCNN-style residual denoiser (Corvi et al. 2023): predicts the noise."""
    depth: int = 17
    width: int = 64
    padding: bool = False       # Corvi's is unpadded: a 256 crop gives a 222 residual
    noise_sigma: float = 1.0    # training noise, in grey levels (of 255)


@dataclass(frozen=True)
class SpectrumConfig:
    """T(r) = log(1 + |FFT2(r)|) per channel, no fftshift, no normalisation."""
    # The residual is expressed in grey levels (x255) before the FFT, so the log compresses a
    # useful dynamic range; with [0,1] units log1p would be almost linear.
    residual_scale: float = 255.0
    # Where the residual comes from: "denoiser" (the paper: x minus its denoised version, here
    # the DnCNN's predicted noise) or "highpass" (a fixed 3x3 Laplacian, nothing learned; the
    # compact recipe's, chosen by measurement). Models trained with one must be run with it; a
    # stored config without the field is a denoiser model.
    residual: str = "denoiser"


@dataclass(frozen=True)
class ExtractorConfig:
    """ResNet phi on the 3-channel log spectrum -> d-dim fingerprint (L2-normalised)."""
    block: str = "bottleneck"               # "basic" or "bottleneck"
    layers: Tuple[int, ...] = (3, 4, 6, 3)  # ResNet-50
    width: int = 64
    dim: int = 128
    stem_stride: int = 2                    # conv stride of the stem
    stem_pool: bool = True                  # max-pool after the stem
    # BatchNorm1d on phi: removes the component common to every input (the residual spectra of
    # all images share most of their structure), which otherwise dominates phi and collapses
    # z = phi/|phi| to one direction before SupCon can separate generators.
    head_bn: bool = True


@dataclass(frozen=True)
class HeadConfig:
    pair_hidden: Tuple[int, ...] = (128, 128)  # g: 2d -> 128 -> 128 -> 1 (scripts)
    real_hidden: Tuple[int, ...] = (64,)       # f: d -> 64 -> 1


@dataclass(frozen=True)
class LossConfig:
    tau: float = 0.02
    bank_size: int = 1024       # paper: M = 1024 (scripts: 65,536)
    w_scl: float = 1.0
    w_att: float = 1.0
    w_cls: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    """The training photos (``ofa_sdk.training.common.PhotoSet``)."""
    # share of the photos held out, chosen by a hash of each relative path: held-out photos give
    # the content of evaluation sets, so evaluation never sees training photos
    holdout: float = 0.15
    max_side: int = 1024        # larger photos are centre-cropped (never resampled) to bound memory


@dataclass(frozen=True)
class Stage0Config:
    """Denoiser training on real photos with Gaussian noise of noise_sigma grey levels."""
    steps: int = 20000
    batch: int = 32
    crop: int = 64
    lr: float = 1e-3
    lr_floor: float = 0.05      # cosine decay ends at lr_floor * lr


@dataclass(frozen=True)
class Stage1Config:
    """Simulator training: L_img = w_mse * MSE + w_perc * perceptual (Eq. 3)."""
    steps: int = 200000
    batch: int = 4
    accum: int = 32
    crop: int = 256
    lr: float = 4e-5
    w_mse: float = 1.0
    w_perc: float = 0.25
    perceptual: str = "ssim"    # "ssim" (weight-free default) or "lpips" (needs user weights)
    lr_floor: float = 0.05
    grad_clip: float = 1.0      # max global gradient norm


@dataclass(frozen=True)
class Stage2Config:
    """Extractor + heads, simulator frozen: multiple sets + single set per step."""
    steps: int = 10000
    n: int = 16                 # images per decoder draw
    m: int = 8                  # decoder draws per step
    crop: int = 256
    lr: float = 1e-4
    lr_floor: float = 0.05
    warmup: float = 0.05        # linear warm-up over this share of the steps (at least one step)
    grad_clip: float = 5.0      # max global gradient norm
    quantize: bool = True       # reconstructions rounded to 8 bit, as generators save them
    jpeg_p: float = 0.0         # probability an image is JPEG-compressed (q in jpeg_q)
    jpeg_q: Tuple[int, int] = (70, 100)
    # Probability that a whole class (one decoder draw's images, or the real batch) is
    # JPEG-compressed at one shared quality drawn from jpeg_q, as a generator's images arrive
    # after one platform's re-encoding; applied before the per-image jpeg_p.
    jpeg_class_p: float = 0.0
    # Probability that a class (a decoder draw's images, or the real batch) is resampled, as a
    # platform resizes a generator's images before re-encoding: its content is drawn larger, by
    # 1/f for a factor f from resample_f, reconstructed, saved to 8 bit and then resized to the
    # crop with one kernel (PIL's bicubic, bilinear, Lanczos or box) shared by the class.
    # resample_share of the class's images are resized, the others cropped as generated, so a
    # class holds both and the extractor learns one fingerprint for the two.
    resample_p: float = 0.0
    resample_f: Tuple[float, float] = (0.5, 1.0)
    resample_share: float = 0.5
    # Real generators in the loop: an .npz of pretrained generators' images of training-photo
    # content (benchmarks/related.py pretrained: ``images`` (N,S,S,3) uint8, ``label``, ``content``);
    # each step draws pretrained_classes of its generators as classes of their own, half of each
    # class's images of content shared by the drawn generators (same-content negatives, as the
    # single set), half of other content. Empty: none.
    pretrained: str = ""
    pretrained_classes: int = 2


@dataclass(frozen=True)
class OFAConfig:
    name: str = "paper"
    crop: int = 256             # inference crop (the model's native input size)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "OFAConfig":
        return _from_dict(cls, d)

    def replace(self, **overrides: Any) -> "OFAConfig":
        """Dotted overrides, e.g. ``cfg.replace(**{"stage2.steps": 10})``."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise KeyError(f"unknown config section {p!r} in override {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise KeyError(f"unknown config field {key!r}")
            node[parts[-1]] = value
        return OFAConfig.from_dict(d)


# The sections (and fields) that shape training only: not part of a model's id
# (``ofa_sdk.weights.inference_id``). A stored configuration (a model file, a checkpoint) may name
# fields of these sections that this version no longer has -- options removed once measured, e.g.
# the twin classes of git tag experiments-twins-both-residual -- and still loads: such fields are
# dropped. An unknown field anywhere else is an error (it could change the fingerprints).
TRAINING_SECTIONS = ("stage0", "stage1", "stage2", "loss", "data", "name")


def _from_dict(cls, d: Dict[str, Any], section: str = ""):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if isinstance(v, dict):
            v = _from_dict(_SECTIONS[f.name], v, f.name)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown and section not in TRAINING_SECTIONS:
        raise KeyError(f"unknown config fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**kwargs)


_SECTIONS = {
    "simulator": SimulatorConfig, "denoiser": DenoiserConfig, "spectrum": SpectrumConfig,
    "extractor": ExtractorConfig, "heads": HeadConfig, "loss": LossConfig, "data": DataConfig,
    "stage0": Stage0Config, "stage1": Stage1Config, "stage2": Stage2Config,
}


def paper() -> OFAConfig:
    """The published configuration (GPU scale)."""
    return OFAConfig()


def compact() -> OFAConfig:
    """CPU-trainable recipe of the model shipped in the package (sizing: docs/experiment-log.md
    section 2): the fixed high-pass residual and stage 2 with whole classes JPEG-compressed
    (issue 11, docs/experiment-log.md section 9). ``ofa-train all --config compact`` retrains it."""
    return OFAConfig(
        name="compact",
        crop=96,
        simulator=SimulatorConfig(enc_channels=(32, 64, 96), stem_channels=16, router_hidden=32),
        denoiser=DenoiserConfig(depth=6, width=24, padding=False, noise_sigma=3.0),
        extractor=ExtractorConfig(block="basic", layers=(1, 1, 1, 1), width=24,
                                  stem_stride=1, stem_pool=True),
        heads=HeadConfig(pair_hidden=(128, 128), real_hidden=(64,)),
        loss=LossConfig(bank_size=1024),
        stage0=Stage0Config(steps=1500, batch=16, crop=64, lr=5e-4),
        stage1=Stage1Config(steps=2500, batch=8, accum=1, crop=96, lr=1e-3),
        spectrum=SpectrumConfig(residual="highpass"),
        stage2=Stage2Config(steps=4200, n=8, m=4, crop=96, lr=1e-3, jpeg_p=0.2,
                            jpeg_q=(60, 100), jpeg_class_p=0.5),
    )


CONFIGS = {"paper": paper, "compact": compact}


def get_config(name: str) -> OFAConfig:
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; choose from {sorted(CONFIGS)}") from None
