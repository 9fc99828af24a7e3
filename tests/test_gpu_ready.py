"""What a CPU can check of the CUDA-only paths: the precision picked for a GPU (from its compute capability, without
starting CUDA), `model.compile` without Triton or a C compiler, MFU, fused AdamW, the DDP clock of
`schedule_by_max_time`, pinned batches, the progress bar's reads, optimizer state moved off the GPU, and the
attention probe of `benchmarks/gpu_check.py`. GPUs are faked: capabilities, device names, NVML, device moves."""

import re
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.utils._triton
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import SingleDeviceStrategy

from tests.conftest import ROOT, TINY, tiny_model
from tinystories import gpu
from tinystories.callbacks import StepProgressBar, Throughput, flops_per_token
from tinystories.precision import pick
from tinystories.data import TinyStoriesData
from tinystories.optim import MuonWithAdamW, Optimization, RankZeroClock, configure


def forbid_cuda_init(monkeypatch):
    """Every torch.cuda call that starts CUDA (or reads it once started) raises."""
    def started(*args, **kwargs):
        raise AssertionError("CUDA was initialized")

    for name in ("init", "_lazy_init", "current_device", "get_device_properties", "get_device_capability",
                 "is_bf16_supported", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, started)


@pytest.mark.parametrize("capabilities, precision", [
    ([(7, 5)], "16-mixed"),             # T4: bf16 only emulated, though is_bf16_supported() says True
    ([(7, 0)], "16-mixed"),             # V100
    ([(8, 0)], "bf16-mixed"),           # A100
    ([(8, 9), (8, 9)], "bf16-mixed"),   # two L4s
    ([(9, 0)], "bf16-mixed"),           # H100, H200
    ([(9, 0), (7, 5)], "16-mixed"),     # mixed cards: the oldest decides, every rank trains alike
])
def test_gpu_precision_follows_compute_capability_without_starting_cuda(monkeypatch, capabilities, precision):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(gpu, "nvml_capabilities", lambda count: capabilities[:count])
    forbid_cuda_init(monkeypatch)
    for accelerator in ("auto", "gpu", "cuda"):
        chosen = pick(accelerator)
        assert chosen.precision == precision and chosen.reason.startswith("NVIDIA GPU sm")
    cpu = pick("cpu")
    assert not cpu.reason.startswith("NVIDIA") and cpu.precision in ("bf16-mixed", "32-true")


def test_no_gpu_keeps_the_cpu_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    forbid_cuda_init(monkeypatch)
    assert pick("auto") == pick("cpu") and pick("auto").reason.startswith("CPU")


class FakeNVML:
    """libnvidia-ml's calls that `nvml_capabilities` makes, for GPUs at NVML indices 0..3."""

    CAPABILITIES = {0: (7, 5), 1: (8, 0), 2: (8, 6), 3: (9, 0)}

    def __init__(self, init_rc: int = 0):
        self.init_rc, self.open = init_rc, 0

    def nvmlInit_v2(self):
        self.open += self.init_rc == 0
        return self.init_rc

    def nvmlShutdown(self):
        self.open -= 1
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        handle._obj.value = 1000 + index  # `handle` is ctypes.byref(a c_void_p)
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        major._obj.value, minor._obj.value = self.CAPABILITIES[handle.value - 1000]
        return 0


def test_nvml_reads_the_visible_gpus_capabilities(monkeypatch):
    nvml = FakeNVML()
    monkeypatch.setattr(gpu.ctypes, "CDLL", lambda name: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")  # CUDA device 0 is NVML's 3
    assert gpu.nvml_capabilities(2) == [(9, 0), (8, 0)]
    assert nvml.open == 0  # every nvmlInit has its nvmlShutdown
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    forbid_cuda_init(monkeypatch)
    assert gpu.capability() == (7, 5)


def test_without_nvml_the_capability_comes_from_torch(monkeypatch):
    monkeypatch.setattr(gpu.ctypes, "CDLL", lambda name: FakeNVML(init_rc=9))  # NVML_ERROR_DRIVER_NOT_LOADED
    assert gpu.nvml_capabilities(1) is None

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(gpu.ctypes, "CDLL", no_library)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(8, 6), (8, 0)][i])
    assert gpu.capability() == (8, 0)


def fake_gpu_trainer():
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))


@pytest.mark.parametrize("triton, cap, compiler, warning", [
    (False, (9, 0), "/usr/bin/gcc", "needs Triton and it is not installed"),
    (True, (6, 1), "/usr/bin/gcc", "needs compute capability 7.0 or newer for Triton; this one has 6.1"),
    (True, (7, 5), None, "needs a C compiler for Triton and none was found"),
    (True, (9, 0), "/usr/bin/gcc", None),
])
def test_compile_on_a_gpu_without_triton_or_a_c_compiler_trains_eager(monkeypatch, triton, cap, compiler, warning):
    monkeypatch.setattr(torch.utils._triton, "has_triton_package", lambda: triton)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(gpu.shutil, "which", lambda name: compiler)
    monkeypatch.delenv("CC", raising=False)
    model = tiny_model(compile=True)
    model._trainer = fake_gpu_trainer()
    if warning is None:
        model.configure_model()
        assert model.compiled and all(layer._compiled_call_impl is not None for layer in model.model.model.layers)
        return
    with pytest.warns(UserWarning, match=f"model.compile: torch.compile on a GPU {warning}.*training without"):
        model.configure_model()
    assert not getattr(model, "compiled", False)
    assert all(layer._compiled_call_impl is None for layer in model.model.model.layers)


def test_cc_is_the_compiler_triton_uses_first(monkeypatch):
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.utils._triton, "has_triton_package", lambda: True)
    monkeypatch.setenv("CC", "/opt/cc")
    assert gpu.compile_blocker(torch.device("cuda", 0)) is None


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H200", torch.bfloat16, 989e12),  # Lightning's table finds no plain "H200"
    ("NVIDIA H200 NVL", torch.bfloat16, 835e12),
    ("NVIDIA GH200 480GB", torch.bfloat16, 989e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
    ("NVIDIA H100 NVL", torch.bfloat16, 835e12),  # Lightning's: 1,979e12, the sparse figure
    ("NVIDIA H100 PCIe", torch.float16, 756e12),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
    ("NVIDIA A100 80GB PCIe", torch.bfloat16, 312e12),
    ("NVIDIA A10", torch.bfloat16, 125e12),
    ("NVIDIA A10G", torch.bfloat16, None),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA L40S", torch.bfloat16, 362e12),
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2e12),
    ("NVIDIA GeForce RTX 3090", torch.bfloat16, 71e12),
    ("NVIDIA GeForce RTX 3090 Ti", torch.bfloat16, None),
    ("Tesla T4", torch.float16, 65e12),
    ("Tesla T4", torch.bfloat16, None),  # no bf16 tensor cores
    ("NVIDIA H100 80GB HBM3", torch.float32, None),  # fp32/tf32: Lightning's table
])
def test_dense_peaks_of_common_gpus(name, dtype, peak):
    assert gpu.dense_peak_flops(name, dtype) == peak


def test_peak_flops_falls_back_to_lightnings_table(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert gpu.peak_flops(cuda, "bf16-mixed") == (989e12, "dense bfloat16 peak of NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    assert gpu.peak_flops(cuda, "16-mixed") == (125e12, "Lightning's table for Tesla V100-SXM2-16GB, float16")
    assert gpu.peak_flops(torch.device("cpu"), "bf16-mixed") == (None, "")


def test_mfu_is_the_palm_count_over_the_peak(monkeypatch):
    model = tiny_model()  # TINY: hidden 32, 2 layers, 4 heads of 8, 2 KV heads, SwiGLU 128, vocab 300, untied
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * (32 * 128) + 2 * 32  # q, k and v, o, MLP, 2 norms
    n = 2 * per_layer + 32 + 300 * 32  # layers, final norm, output head; the input embedding left out
    assert n == 40_480
    hand = 6 * n + 12 * 2 * 32 * 128  # 6N + 12 L H T at T = 128
    assert flops_per_token(model, 128) == hand == 341_184

    clock = [10.0]  # on_train_start at 10 s, the logging step at 12 s: 2 s for two batches
    monkeypatch.setattr("tinystories.callbacks.time.perf_counter", lambda: clock.pop(0) if clock else 12.0)
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics))
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=2, loggers=[logger], world_size=1, precision="32-true",
                              strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor))
    callback = Throughput(peak_flops=1e12)
    callback.on_train_start(trainer, model)
    mask = torch.zeros(2, 128, dtype=torch.long)
    mask[0, 28:], mask[1, 100:] = 1, 1  # 128 real tokens in a 2 x 128 batch
    batch = {"input_ids": torch.zeros(2, 128, dtype=torch.long), "attention_mask": mask}
    for step in (1, 2):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, model, None, batch, step - 1)
    assert len(logged) == 1
    assert logged[0]["throughput/tokens_per_sec"] == 256 / 2
    assert logged[0]["throughput/mfu"] == pytest.approx(128 * 341_184 / 1e12, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_adamw_runs_fused_on_a_cpu_and_a_gpu(optimizer):
    model = tiny_model()

    def fused(device):
        opt, _ = configure(model.model.named_parameters(), Optimization(optimizer=optimizer), 10, device)
        return (opt.adamw if optimizer == "muon" else opt).defaults["fused"]

    # in every precision: the model clips a fused AdamW's gradients itself (tests/test_clipping.py)
    assert fused("cpu") is True and fused("cuda") is True
    assert fused("meta") is None


def test_ddp_clock_is_broadcast_every_n_steps_and_equal_on_every_rank():
    broadcasts = []

    def rank_zero_clock(step):  # rank 0 spends 1% of max_time per step, and a little more from step 6
        return 0.01 * step + (0.002 * (step - 6) if step > 6 else 0.0)

    def run(offset: float, every: int) -> list[float]:
        """A rank whose own clock is `offset` ahead of rank 0's; the broadcast hands it rank 0's numbers."""
        clock, reads = RankZeroClock(), []

        def read():
            reads.append(step)
            return rank_zero_clock(step) + offset

        def broadcast(obj):
            broadcasts.append(obj)
            start, _, _ = obj
            mine = clock.anchor
            pace = 0.0 if mine is None else (rank_zero_clock(start) - rank_zero_clock(mine[0])) / (start - mine[0])
            return start, rank_zero_clock(start), pace  # what rank 0 sent

        out = []
        for step in range(12):
            out.append(clock(step, read, broadcast, every=every))
        return out, reads

    rank0, reads = run(0.0, every=4)
    rank1, _ = run(0.003, every=4)
    assert reads == [0, 4, 8] and len(broadcasts) == 6  # 3 per rank, not 12
    assert rank0 == rank1  # the same learning rate everywhere
    assert rank0[:4] == [0.0] * 4  # no pace known before the second broadcast
    assert rank0[5] == pytest.approx(0.05) and rank0[8] == pytest.approx(0.084)  # extrapolated, then re-read
    broadcasts.clear()
    exact, reads = run(0.0, every=1)  # one process: read at every step
    assert reads == list(range(12)) and exact == pytest.approx([rank_zero_clock(s) for s in range(12)])


def test_batches_are_pinned_only_for_a_gpu():
    dm = TinyStoriesData()
    assert not dm.loader([], shuffle=False).pin_memory  # no trainer: a benchmark, `evaluate`
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert not dm.loader([], shuffle=False).pin_memory
    dm.trainer = fake_gpu_trainer()
    assert dm.loader([], shuffle=False).pin_memory


class CountingTrainer:
    """What the progress bar reads of a trainer; counts reads of the logged values (each a `.item()` per value)."""

    def __init__(self, log_every_n_steps: int):
        self.log_every_n_steps, self.max_steps, self.loggers, self.training = log_every_n_steps, 10, [], True
        self.global_step, self.reads = 0, 0

    @property
    def progress_bar_metrics(self):
        self.reads += 1
        return {"train/loss": 2.0 - self.global_step / 10}


def test_progress_bar_reads_the_loss_only_at_logging_steps():
    bar, trainer = StepProgressBar(), CountingTrainer(log_every_n_steps=5)
    shown = []
    for step in range(1, 11):
        trainer.global_step = step
        shown.append(bar.get_metrics(trainer, None))
    assert trainer.reads == 3  # steps 1 (nothing shown yet), 5 and 10
    assert [m["step"] for m in shown] == [f"{s}/10" for s in range(1, 11)]
    assert shown[3]["train/loss"] == 1.9 and shown[4]["train/loss"] == 1.5 and shown[9]["train/loss"] == 1.0
    trainer.training = False  # validation: read every time
    bar.get_metrics(trainer, None)
    bar.get_metrics(trainer, None)
    assert trainer.reads == 5


def test_teardown_moves_the_inner_optimizers_state(monkeypatch):
    model = tiny_model()
    optimizer = MuonWithAdamW(model.model.named_parameters(), lr=1e-3, muon_lr=1e-3, betas=(0.9, 0.95),
                              weight_decay=0.0)
    ids = torch.randint(0, TINY["vocab_size"], (2, 8))
    model(ids).float().logsumexp(-1).sum().backward()
    optimizer.step()
    inner = [t for opt in (optimizer.muon, optimizer.adamw) for state in opt.state.values()
             for key, t in state.items() if key != "step"]
    assert len(inner) == 2 * 7 + 2 * (2 + 2 * 2 + 1)  # muon: 7 matrices a layer; adamw: embedding, head, 5 norms

    moved = []  # a fake device move: Lightning's teardown, as on a GPU, but to float64 on the CPU

    def move(tensor, device):
        moved.append(tensor)
        return tensor.to(torch.float64)

    monkeypatch.setattr("lightning.fabric.utilities.optimizer.move_data_to_device", move)
    strategy = SingleDeviceStrategy(device=torch.device("cpu"), accelerator=CPUAccelerator())
    strategy.optimizers = [optimizer]
    strategy.teardown()  # what `fit` calls at its end
    assert {id(t) for t in moved} == {id(t) for t in inner}
    assert all(t.dtype == torch.float64 for opt in (optimizer.muon, optimizer.adamw) for state in opt.state.values()
               for key, t in state.items() if key != "step")


def load_gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


def test_attention_probe_reports_nan_in_outputs_and_gradients():
    gpu_check = load_gpu_check()
    lm = tiny_model()
    cpu = torch.device("cpu")
    assert gpu_check.attention_probe(lm, cpu, torch.bfloat16).startswith(
        "attention: no NaN or inf in outputs, loss or gradients (left-padded bfloat16 forward and backward")

    def nan_at_pads(module, args, output):  # what a fused kernel may give a fully masked row
        out = output[0].clone()
        out[1:, 0] = float("nan")  # every row but the first starts with a pad
        return (out, *output[1:])

    lm.model.model.layers[0].self_attn.register_forward_hook(nan_at_pads)
    line = gpu_check.attention_probe(lm, cpu, torch.bfloat16)
    assert line.startswith("attention: NaN or inf in outputs")
    assert re.findall(r"NaN or inf in outputs[a-z ]* at length (\d+)", line) == ["448", "512"]
