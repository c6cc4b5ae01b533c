"""ofa-sdk packaging.

``training/`` and ``kernels/`` live at the repository root (the product's layout) and are
installed *inside* the SDK as ``ofa_sdk.training`` and ``ofa_sdk.kernels`` (package_dir mapping),
so an installed distribution adds exactly one top-level name, ``ofa_sdk``.
"""
from setuptools import setup

setup(
    name="ofa-sdk",
    version="0.1.0",
    description="Attribution of synthetic images to their generators, trained on real photos only",
    python_requires=">=3.10",
    packages=["ofa_sdk", "ofa_sdk.models", "ofa_sdk.evaluation", "ofa_sdk.training",
              "ofa_sdk.kernels"],
    package_dir={"ofa_sdk.training": "training", "ofa_sdk.kernels": "kernels"},
    package_data={"ofa_sdk": ["weights/*.safetensors", "weights/*.json"]},
    install_requires=["torch>=2.4", "numpy>=1.24", "pillow>=10", "safetensors>=0.4", "tqdm>=4.60"],
    extras_require={
        "test": ["pytest>=7", "scikit-learn"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        "triton": ["triton"],
        "tensorrt": ["tensorrt"],
        "eval": ["scikit-learn", "matplotlib"],
    },
    entry_points={"console_scripts": ["ofa-sdk=ofa_sdk.cli:main",
                                      "ofa-train=ofa_sdk.training.__main__:main"]},
)
