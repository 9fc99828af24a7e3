"""What training on a CPU does differently: small attention heads in fp32, fused AdamW, freed memory reused."""

import ctypes
import platform
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import fit_args, tiny_model
from tinystories.attention import ATTENTION
from tinystories.callbacks import ReuseFreedMemory
from tinystories.cli import cli_main
from tinystories.data import collate
from tinystories.model import TinyStoriesLM
from tinystories.optim import configure

SMALL_HEADS = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=128)  # heads of 16, as the 19.5M reference model
WIDE_HEADS = {**SMALL_HEADS, "num_attention_heads": 1, "num_key_value_heads": 1}  # one head of 64


def batch_of(*lengths: int) -> dict:
    torch.manual_seed(1)
    return collate([{"input_ids": torch.randint(3, 300, (n,)).tolist(), "num_bytes": 0} for n in lengths], 0)


class AttentionKernels(TorchDispatchMode):
    """The dtypes the attention kernels run in (seen below autocast, which casts inside the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.__name__:
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def attention_dtypes(model: TinyStoriesLM, autocast: bool) -> set[torch.dtype]:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), AttentionKernels() as spy:
        model.nats(batch_of(20, 9))
    return spy.dtypes


@pytest.mark.parametrize("hparams, autocast, expected", [
    (SMALL_HEADS, True, {torch.float32}),    # bf16 autocast, heads of 16: fp32
    (WIDE_HEADS, True, {torch.bfloat16}),    # heads of 64 stay in bf16
    (SMALL_HEADS, False, {torch.float32}),   # fp32 training is untouched
])
def test_small_heads_run_attention_in_fp32_under_cpu_autocast(hparams, autocast, expected):
    model = tiny_model(hparams)
    assert model.model.config._attn_implementation == ATTENTION
    assert attention_dtypes(model, autocast) == expected


def test_attention_matches_sdpa_with_and_without_padding():
    torch.manual_seed(0)
    ours = tiny_model(SMALL_HEADS)
    plain = tiny_model(SMALL_HEADS)
    plain.load_state_dict(ours.state_dict())
    plain.model.set_attn_implementation("sdpa")
    batch = batch_of(30, 7, 18)  # left-padded: the mask must reach the attention
    with torch.no_grad():
        torch.testing.assert_close(ours.nats(batch), plain.nats(batch), rtol=0, atol=0)  # fp32: the same call
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nats, count = ours.nats(batch)
            plain_nats, plain_count = plain.nats(batch)
    assert count == plain_count
    torch.testing.assert_close(nats / count, plain_nats / count, rtol=0, atol=0.02)  # bf16 against fp32 attention


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_adamw_is_fused_on_the_cpu(optimizer):
    model = tiny_model(SMALL_HEADS, optimizer=optimizer)
    adamw, _ = configure(model.model.named_parameters(), model.optimization, total_steps=10, device="cpu")
    adamw = adamw.adamw if optimizer == "muon" else adamw
    assert all(group["fused"] for group in adamw.param_groups)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mapped_blocks_for_a_new_64_mb_tensor() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    tensor = torch.empty(16 * 2**20)  # 64 MB, over glibc's largest mmap threshold (32 MB)
    after = libc.mallinfo2().hblks
    del tensor
    return after - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_for_reuse_while_fitting_on_the_cpu(tmp_path, tiny_tokenizer_dir):
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir), run=False)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ReuseFreedMemory))
    assert mapped_blocks_for_a_new_64_mb_tensor() == 1  # glibc's default: mapped from the OS, unmapped when freed
    callback.on_fit_start(cli.trainer, cli.model)
    try:
        assert callback.active and mapped_blocks_for_a_new_64_mb_tensor() == 0  # from the heap, back to the heap
    finally:
        callback.on_fit_end(cli.trainer, cli.model)
    assert not callback.active and mapped_blocks_for_a_new_64_mb_tensor() == 1
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    callback.on_fit_start(gpu, cli.model)
    assert not callback.active and mapped_blocks_for_a_new_64_mb_tensor() == 1


def test_compile_without_a_cpp_compiler_trains_eager_with_a_warning(monkeypatch):
    model = tiny_model(SMALL_HEADS, compile=True)
    monkeypatch.setattr("tinystories.model.cpp_compiler", lambda: None)
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler"):
        model.configure_model()
    assert not getattr(model, "compiled", False)
    monkeypatch.undo()
    model.configure_model()  # this machine has one: compiled lazily, on the first training step
    assert model.compiled and all(layer._compiled_call_impl is not None for layer in model.model.model.layers)
