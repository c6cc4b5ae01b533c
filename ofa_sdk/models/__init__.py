"""Reference PyTorch implementation of every learned component of the paper."""
from .denoiser import DnCNN
from .heads import PairHead, RealHead
from .mokconv import MoKConv
from .ofa import OFAModel
from .resnet import ResNet
from .simulator import (Architecture, FingerprintSimulator, sample_architecture, space_size)
from .spectrum import log_spectrum, log_spectrum_ref

__all__ = ["DnCNN", "PairHead", "RealHead", "MoKConv", "OFAModel", "ResNet", "Architecture",
           "FingerprintSimulator", "sample_architecture", "space_size", "log_spectrum",
           "log_spectrum_ref"]
