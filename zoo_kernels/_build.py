"""Loads the compiled extension and checks it against the running torch."""
import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - message for broken installs
    raise ImportError(
        "zoo_kernels._C could not be loaded. Build it with `pip install --no-build-isolation .` "
        f"against the torch you run ({torch.__version__}). Cause: {e}"
    ) from e


def build_info():
    """Version, whether CUDA was compiled in, the CUDA version and archs, and OpenMP."""
    return dict(_C.build_info())


def _check_cuda_version():
    info = build_info()
    if not info["with_cuda"] or torch.version.cuda is None:
        return
    built = info["cuda_version"]
    if built.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise RuntimeError(
            f"zoo_kernels was compiled with CUDA {built} but torch uses CUDA {torch.version.cuda}; "
            "rebuild with `pip install --no-build-isolation --force-reinstall .`"
        )


_check_cuda_version()
