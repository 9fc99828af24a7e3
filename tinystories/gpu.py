"""What training needs to know about CUDA GPUs: compute capability (read without initializing CUDA), whether
`torch.compile` can run, and dense peak FLOP/s for MFU.

    capability()                                   # (9, 0) on an H100; the lowest of the visible GPUs; None without
    dense_peak_flops("NVIDIA H200", torch.bfloat16)  # 989e12
    peak_flops(torch.device("cuda", 0), "bf16-mixed")  # (989e12, "dense bf16 peak of NVIDIA H200")
    compile_blocker(torch.device("cuda", 0))       # why torch.compile cannot run there, or None

`capability` asks NVML, as `torch.cuda.device_count` does, so the process that picks the precision never starts
CUDA: in a notebook Lightning runs several GPUs with `ddp_fork`, whose children cannot use CUDA once the parent has
(`torch.cuda.get_device_capability` and `is_bf16_supported` both call `torch.cuda._lazy_init`).
"""

import ctypes
import os
import re
import shutil
from typing import Optional

import torch

NATIVE_BF16 = (8, 0)  # Ampere: bf16 tensor cores; before it bf16 matmuls are emulated
TRITON_MIN = (7, 0)  # torch/_inductor/scheduler.py `create_backend`: GPUTooOldForTriton below this

# Dense (no 2:4 sparsity) tensor-core peaks, fp16/bf16 inputs with fp32 accumulation, from NVIDIA's datasheets
# (Ada and Ampere GeForce: their architecture whitepapers). Lightning's table (`get_available_flops`) finds no
# "NVIDIA H200" (it expects "h200 sxm1"), lists the H100 NVL's sparse figure (1,979 TFLOP/s) and gives the RTX 4090
# and 3090 their non-tensor rates. First match of the pattern in the lowercase device name wins. The third field is
# False where the card has no bf16 tensor cores (the T4's 65 TFLOP/s are fp16: `16-mixed` there).
DENSE_PEAKS = (
    (r"\bh200 nvl\b", 835e12, True),
    (r"\bg?h200\b", 989e12, True),  # H200 SXM, GH200
    (r"\bh100 nvl\b", 835e12, True),
    (r"\bh100 pcie\b|\bh100\b.*\bhbm2e\b", 756e12, True),
    (r"\bg?h100\b", 989e12, True),  # "NVIDIA H100 80GB HBM3" is the SXM card
    (r"\ba100\b", 312e12, True),
    (r"\ba10\b", 125e12, True),  # not the A10G: AWS publishes no tensor figure for it; Lightning's table has one
    (r"\bl40s\b", 362e12, True),
    (r"\bl40\b", 181e12, True),
    (r"\bl4\b", 121e12, True),
    (r"\brtx 4090\b", 165.2e12, True),
    (r"\brtx 3090(?! ti)\b", 71e12, True),
    (r"\bt4\b", 65e12, False),
)


def capability() -> Optional[tuple[int, int]]:
    """The lowest compute capability among the visible CUDA GPUs, or None when there is none.

    From NVML, which does not initialize CUDA. Where NVML cannot answer (no libnvidia-ml, MIG devices), from
    `torch.cuda.get_device_capability`; there `torch.cuda.device_count` has already fallen back to the CUDA runtime
    (`cudaGetDeviceCount`), which marks forked children as unable to use CUDA, so nothing more is lost.
    """
    count = torch.cuda.device_count()  # NVML first (torch/cuda/__init__.py `device_count`); 0 on a CPU-only build
    if count <= 0:
        return None
    found = nvml_capabilities(count)
    if found is None:
        found = [torch.cuda.get_device_capability(i) for i in range(count)]
    return min(found)


def nvml_capabilities(count: int) -> Optional[list[tuple[int, int]]]:
    """Compute capabilities of CUDA devices 0..count-1 (CUDA_VISIBLE_DEVICES applied) from NVML, or None."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
    except (OSError, AttributeError):
        return None
    try:
        found = []
        for i in range(count):
            handle, major, minor = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_int()
            index = torch.cuda._get_nvml_device_index(i)  # the NVML index of CUDA device i
            if (nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0
                    or nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) != 0):
                return None
            found.append((major.value, minor.value))
        return found
    except (RuntimeError, AttributeError):  # a device NVML cannot map (MIG), an NVML without the call
        return None
    finally:
        nvml.nvmlShutdown()


def precision_for(cap: tuple[int, int]) -> str:
    """`bf16-mixed` where bf16 is native (sm80+), else `16-mixed`.

    `torch.cuda.is_bf16_supported()` counts emulation (it is true on a T4, sm75): bf16 matmuls would then be
    emulated, SDPA would fall to its math kernel and Inductor skips bf16 graphs.
    """
    return "bf16-mixed" if cap >= NATIVE_BF16 else "16-mixed"


def dense_peak_flops(name: str, dtype: torch.dtype) -> Optional[float]:
    """A device's dense fp16/bf16 tensor-core peak from `DENSE_PEAKS`, or None (other cards, other dtypes)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for pattern, flops, bf16 in DENSE_PEAKS:
        if re.search(pattern, name.lower()):
            return flops if bf16 or dtype == torch.float16 else None
    return None


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision: bf16 for `bf16-*`, fp16 for `16-*`, else fp32."""
    precision = str(precision)
    return torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else torch.float32


def peak_flops(device: torch.device, precision: str) -> tuple[Optional[float], str]:
    """The device's peak FLOP/s at `precision` and where it comes from: `DENSE_PEAKS`, else Lightning's table."""
    if device.type != "cuda":
        return None, ""
    dtype, name = precision_dtype(precision), torch.cuda.get_device_name(device)
    what = str(dtype).removeprefix("torch.")
    if flops := dense_peak_flops(name, dtype):
        return flops, f"dense {what} peak of {name}"
    from lightning.fabric.utilities.throughput import get_available_flops

    if flops := get_available_flops(device, dtype):
        return float(flops), f"Lightning's table for {name}, {what}"
    return None, ""


def compile_blocker(device: torch.device) -> Optional[str]:
    """Why `torch.compile` (Inductor) cannot run on this CUDA device, or None.

    Inductor generates Triton kernels for CUDA: without Triton, or below sm70, `create_backend` raises
    (torch/_inductor/scheduler.py). Triton builds its launcher and driver module with a C compiler on first use:
    `$CC`, else gcc, else clang (triton/runtime/build.py), and raises "Failed to find C compiler" without one.
    """
    from torch.utils._triton import has_triton_package

    if not has_triton_package():
        return "torch.compile on a GPU needs Triton and it is not installed (pip install triton)"
    cap = torch.cuda.get_device_capability(device)
    if cap < TRITON_MIN:
        return (f"torch.compile on a GPU needs compute capability 7.0 or newer for Triton; this one has "
                f"{cap[0]}.{cap[1]}")
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return ("torch.compile on a GPU needs a C compiler for Triton and none was found (install gcc or clang, or "
                "set CC)")
    return None
