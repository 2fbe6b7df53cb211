"""Build zoo_kernels._C: CPU kernels always, CUDA kernels when a CUDA toolkit and a CUDA torch are present.

Environment switches:
  ZOO_KERNELS_FORCE_CPU=1   build without CUDA even where it is available
  ZOO_KERNELS_FORCE_CUDA=1  build the CUDA kernels even without a visible GPU (needs nvcc and a CUDA torch)
  TORCH_CUDA_ARCH_LIST      CUDA archs, e.g. "9.0" (default: SASS for 7.5-12.0 plus PTX)
  ZOO_KERNELS_DEBUG=1       -O0 -g
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def flag(name):
    return os.environ.get(name, "0").lower() not in ("", "0", "false", "no")


def want_cuda():
    if flag("ZOO_KERNELS_FORCE_CPU"):
        return False
    cuda_torch = torch.version.cuda is not None
    if flag("ZOO_KERNELS_FORCE_CUDA"):
        if not cuda_torch or CUDA_HOME is None:
            raise RuntimeError("ZOO_KERNELS_FORCE_CUDA=1 needs a CUDA build of torch and CUDA_HOME (the toolkit root)")
        return True
    return cuda_torch and CUDA_HOME is not None


def nvidia_wheel_includes():
    """cuBLAS/cuSPARSE headers of the nvidia-* wheels that a CUDA torch pulls in."""
    try:
        import nvidia  # noqa: PLC0415
    except ImportError:
        return []
    return [p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "cu*", "include"))]


def extension():
    debug = flag("ZOO_KERNELS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-std=c++20", "-fopenmp", f'-DZK_VERSION="{VERSION}"']
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(name="zoo_kernels._C", sources=sources, extra_link_args=["-fopenmp"], include_dirs=[os.path.join(HERE, "csrc")])
    if not want_cuda():
        return CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    defs = ["-DWITH_CUDA", f'-DZK_CUDA_ARCHS="{archs}"']
    kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    kwargs["include_dirs"] += nvidia_wheel_includes()
    nvcc = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"] + os.environ.get("NVCC_FLAGS", "").split()
    return CUDAExtension(extra_compile_args={"cxx": cxx + defs, "nvcc": nvcc + defs}, **kwargs)


setup(
    name="zoo_kernels",
    version=VERSION,
    description="Model selection and training-time prediction for fine-tuning, on fused NTK kernels",
    packages=find_packages(include=["zoo_kernels", "zoo_kernels.*"]),
    package_data={"zoo_kernels.zoo": ["checkpoints/*.pt", "checkpoints/*.json", "data/*.csv", "data/*.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "scipy", "tqdm", "matplotlib>=3.7"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    entry_points={"console_scripts": ["zoo-kernels=zoo_kernels.cli:main"]},
    zip_safe=False,
)
