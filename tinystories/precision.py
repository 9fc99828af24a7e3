"""`trainer.precision: null`: the precision that is fast on the hardware at hand, and why.

    pick("auto")   # Pick("bf16-mixed", "NVIDIA GPU sm90: native bf16")                          on an H100
                   # Pick("32-true", "CPU without bf16 instructions (AVX2): bf16 is slower here") on most laptops
    cpu_class()    # "AMX" | "AVX-512 bf16, no AMX" | "AVX-512, no bf16" | "AVX2" | "no AVX2"

On a CPU, bf16 matrix products are fast on AMX tiles (Intel Xeon from Sapphire Rapids on) and slower than fp32
without bf16 instructions: oneDNN converts around its fp32 kernels (AVX-512) or falls back to a reference kernel
(AVX2: 20 to 40 times slower than fp32). Between the two, AVX-512 bf16 without AMX, it depends on the core: 2x faster
training steps on an AMD EPYC (Zen 5), 0.78x on a Xeon VM whose hypervisor hides AMX. There a short probe decides:
one SwiGLU block of the model's width, forward and backward, timed in fp32 and under bf16 autocast (under a second), its
result cached per machine and setting in the cache folder (docs/performance.md, "CPU classes"). Everything follows
what oneDNN will use: `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) below a level hides it from oneDNN, as a VM's
hypervisor hides AMX.
"""

import json
import os
import platform
import time
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from tinystories import gpu

# oneDNN's `cpu_isa_t` names (ONEDNN_MAX_CPU_ISA), lowest first; a name it does not know sets no limit, as in oneDNN.
ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
             "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
             "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
FAST_ENOUGH = 1.5  # bf16-mixed only where the probe's bf16 block is at least this much faster than fp32
PROBE_ROWS = 2048  # tokens in the probe's batch
PROBE_FILE = "precision-probe.json"


class Pick(NamedTuple):
    precision: str
    reason: str


def onednn_isa_limit() -> str:
    """The ISA limit the user put on oneDNN (`ONEDNN_MAX_CPU_ISA`, else `DNNL_MAX_CPU_ISA`), upper case, or ''."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()


def allows(limit: str, level: str) -> bool:
    """Whether oneDNN under the ISA `limit` may use `level`: "AMX" or a name of `ISA_ORDER`."""
    if limit not in ISA_ORDER:  # '', ALL, DEFAULT
        return True
    if level == "AMX":
        return "AMX" in limit
    return ISA_ORDER.index(limit) >= ISA_ORDER.index(level)


def cpu_class() -> str:
    """This CPU's class for training, as oneDNN will see it (its ISA limit applied)."""
    caps, limit = torch.cpu.get_capabilities(), onednn_isa_limit()
    if caps.get("amx_tile") and caps.get("amx_bf16") and allows(limit, "AMX"):
        return "AMX"
    if caps.get("avx512_bf16") and allows(limit, "AVX512_CORE_BF16"):
        return "AVX-512 bf16, no AMX"
    if caps.get("avx512_f") and allows(limit, "AVX512_CORE"):
        return "AVX-512, no bf16"
    if caps.get("avx2") and allows(limit, "AVX2"):
        return "AVX2"
    return "no AVX2"


def pick(accelerator: str, hidden_size: int = 256, intermediate_size: Optional[int] = None) -> Pick:
    """`trainer.precision: null` for `trainer.accelerator` and a model of `hidden_size` (SwiGLU `intermediate_size`,
    null: 8/3 of it): on CUDA GPUs bf16-mixed from sm80 on (native bf16), 16-mixed below; on a CPU bf16-mixed with
    AMX tiles, or with AVX-512 bf16 where `probe` measures bf16 at least `FAST_ENOUGH` times faster; else 32-true.

    The GPU's capability comes from NVML (`gpu.capability`), so this process does not start CUDA and Lightning's
    `ddp_fork` children still can."""
    if accelerator in ("auto", "gpu", "cuda") and (cap := gpu.capability()) is not None:
        precision = gpu.precision_for(cap)
        why = "native bf16" if precision == "bf16-mixed" else "no native bf16 before sm80"
        return Pick(precision, f"NVIDIA GPU sm{cap[0]}{cap[1]}: {why}")
    kind, limit = cpu_class(), onednn_isa_limit()
    limited = f", oneDNN limited to {limit}" if limit in ISA_ORDER else ""
    if kind == "AMX":
        return Pick("bf16-mixed", f"CPU with AMX{limited}: bf16 matrix units")
    if kind != "AVX-512 bf16, no AMX":
        return Pick("32-true", f"CPU without bf16 instructions ({kind}{limited}): bf16 is slower here")
    from tinystories.model import mlp_size  # here: model imports optim, which imports this module

    intermediate_size = intermediate_size or mlp_size(hidden_size)
    speedup = cached_probe(hidden_size, intermediate_size)
    measured = f"a bf16 block measured {speedup:.2f}x fp32's speed"
    if speedup >= FAST_ENOUGH:
        return Pick("bf16-mixed", f"CPU with AVX-512 bf16, no AMX{limited}: {measured}")
    return Pick("32-true", f"CPU without AMX{limited}: bf16 is slower here ({measured})")


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 matrix products are fast on `device`, for work that picks its own dtype (Muon's Newton-Schulz
    iterations): a CUDA GPU from sm80, a CPU where `pick` chooses bf16-mixed. Elsewhere bf16 products are emulated,
    converted or run by a reference kernel (oneDNN at AVX2: about 4x the demo's whole fp32 step)."""
    device = torch.device(device)
    if device.type == "cuda":
        return (cap := gpu.capability()) is not None and cap >= gpu.NATIVE_BF16
    return device.type == "cpu" and pick("cpu").precision == "bf16-mixed"


def probe(hidden_size: int, intermediate_size: int, rounds: int = 7) -> float:
    """How many times faster one SwiGLU block (`PROBE_ROWS` tokens, forward and backward) runs under bf16 autocast
    than in fp32 on this CPU: the fastest of `rounds` interleaved timings of each, after one warm-up each (the
    fastest, as other work on the machine only ever slows a timing down)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_ROWS, hidden_size, generator=g, requires_grad=True)
    gate = torch.randn(intermediate_size, hidden_size, generator=g, requires_grad=True)
    down = torch.randn(hidden_size, intermediate_size, generator=g, requires_grad=True)

    def seconds(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = F.linear(F.silu(F.linear(x, gate)), down)
        out.float().square().mean().backward()
        return time.perf_counter() - start

    times = {False: [], True: []}
    for round_ in range(rounds + 1):
        for bf16 in (False, True):
            took = seconds(bf16)
            if round_:
                times[bf16].append(took)
    return min(times[False]) / min(times[True])


def cached_probe(hidden_size: int, intermediate_size: int) -> float:
    """`probe`'s result for this machine, threads, oneDNN limit, torch and shape, measured once and kept in
    `<cache folder>/precision-probe.json` (a cache that cannot be written is measured again next time)."""
    from tinystories.atomic import atomic_write
    from tinystories.data import default_cache_dir

    key = "|".join(map(str, (cpu_name(), cpu_class(), torch.__version__, torch.get_num_threads(), onednn_isa_limit(),
                             hidden_size, intermediate_size)))
    path = default_cache_dir() / PROBE_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = {}
    if key in found:
        return float(found[key])
    found[key] = round(probe(hidden_size, intermediate_size), 3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump(found, f, indent=1)
    except OSError:
        pass
    return found[key]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
