"""`trainer.precision: null` on a CPU: bf16-mixed only where bf16 is fast (AMX, or AVX-512 bf16 where the probe
measures it fast), following oneDNN's ISA limit; the pick is printed and logged, and the saved config keeps null."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import fit_args
from tinystories import precision
from tinystories.cli import cli_main
from tinystories.precision import Pick

CACHED_PROBE = precision.cached_probe
AMX_CPU = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
ZEN_CPU = {"avx2": True, "avx512_f": True, "avx512_bf16": True}  # AVX-512 bf16, no AMX (AMD EPYC, many Xeon VMs)


@pytest.fixture
def cpu(monkeypatch):
    """Fakes the CPU's capabilities; the probe fails the test unless a test sets it."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)

    def no_probe(*args):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(precision, "cached_probe", no_probe)

    def fake(capabilities: dict):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    return fake


@pytest.mark.parametrize("limit, kind, picked", [
    (None, "AMX", "bf16-mixed"),
    ("ALL", "AMX", "bf16-mixed"),
    ("avx512_core_amx", "AMX", "bf16-mixed"),                  # oneDNN reads the name in any case
    ("AVX10_1_512_AMX", "AMX", "bf16-mixed"),
    ("AVX512_CORE_BF16", "AVX-512 bf16, no AMX", None),        # AMX hidden, as on many VMs: the probe decides
    ("AVX512_CORE", "AVX-512, no bf16", "32-true"),
    ("AVX2", "AVX2", "32-true"),
])
def test_the_cpu_pick_follows_what_onednn_will_use(cpu, monkeypatch, limit, kind, picked):
    cpu(AMX_CPU)
    if limit:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert precision.cpu_class() == kind
    if picked is None:
        for speedup, expected in ((0.78, "32-true"), (3.4, "bf16-mixed")):
            monkeypatch.setattr(precision, "cached_probe", lambda hidden, inner: speedup)
            chosen = precision.pick("cpu")
            assert chosen.precision == expected and f"measured {speedup:.2f}x" in chosen.reason
            assert ("bf16 is slower here" in chosen.reason) == (expected == "32-true")
        return
    chosen = precision.pick("auto")
    assert chosen.precision == picked
    shown = bool(limit) and f"oneDNN limited to {limit.upper()}" in chosen.reason
    assert shown == (limit not in (None, "ALL"))


def test_without_bf16_instructions_the_pick_is_fp32_with_its_reason(cpu):
    cpu({"avx2": True})
    assert precision.pick("cpu") == Pick("32-true", "CPU without bf16 instructions (AVX2): bf16 is slower here")
    cpu({})
    assert precision.pick("cpu").precision == "32-true" and precision.cpu_class() == "no AVX2"


def test_the_probe_runs_once_per_machine_setting_and_shape(cpu, monkeypatch, tmp_path):
    cpu(ZEN_CPU)
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "cached_probe", CACHED_PROBE)  # the real cache, around a counted probe
    monkeypatch.setattr(precision, "probe", lambda hidden, inner: calls.append((hidden, inner)) or 0.5)
    assert precision.pick("cpu", 192, 512).precision == "32-true"
    assert precision.pick("cpu", 192, 512).precision == "32-true"
    assert calls == [(192, 512)]
    precision.pick("cpu")  # another shape: 256 and 768
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # another setting
    precision.pick("cpu")
    assert calls == [(192, 512), (256, 768), (256, 768)]
    saved = json.loads((tmp_path / precision.PROBE_FILE).read_text())
    assert sorted(saved.values()) == [0.5, 0.5, 0.5] and any("|AVX512_CORE_BF16|" in key for key in saved)


@pytest.mark.slow
def test_the_probe_finds_bf16_slow_where_onednn_has_no_bf16_kernel():
    """oneDNN limited to AVX2 runs bf16 products in a reference kernel, 10 to 40 times slower than fp32: the probe, in
    a process of its own (oneDNN reads the limit once), must measure bf16 far below 1."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", "from tinystories.precision import probe; print(probe(64, 192, 2))"],
                         env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    assert 0 < float(out) < 0.5, out


def test_fit_prints_and_logs_the_pick_and_the_saved_config_keeps_null(tmp_path, tiny_tokenizer_dir, monkeypatch,
                                                                     capsys):
    """A run resumed on another machine picks again: its config.yaml says null, not the first machine's pick."""
    args = fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "2", "--run", "moved")
    at = args.index("--trainer.precision")
    del args[at:at + 2]  # the config's null, as users run it
    monkeypatch.setattr(precision, "pick", lambda *a: Pick("bf16-mixed", "CPU with AMX: bf16 matrix units"))
    cli_main(args)
    assert "precision: bf16-mixed (CPU with AMX: bf16 matrix units)" in capsys.readouterr().out.splitlines()
    run = tmp_path / "lightning_logs" / "moved"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] is None
    assert yaml.safe_load((run / "hparams.yaml").read_text())["trainer.precision"] == "bf16-mixed"

    monkeypatch.setattr(precision, "pick", lambda *a: Pick("32-true", "CPU without AMX: bf16 is slower here"))
    cli = cli_main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert cli.trainer.precision == "32-true" and cli.trainer.global_step == 3
    assert "precision: 32-true (CPU without AMX: bf16 is slower here)" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] is None
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["precision"] == "32-true"  # each checkpoint records what it was trained in (hparams.yaml: the first)
    validated = cli_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", "last"])
    assert validated.trainer.precision == "32-true"


def test_muon_orthogonalizes_in_bf16_only_where_bf16_is_fast(cpu, monkeypatch):
    """Muon's Newton-Schulz products run in bf16 as torch's do, but in fp32 where bf16 is slow: with oneDNN at AVX2
    they made the demo's fp32 step about 4x slower (docs/performance.md, "CPU classes")."""
    from tests.conftest import tiny_model
    from tinystories import gpu
    from tinystories.optim import Optimization, configure, newton_schulz

    def ns_dtype(device):
        optimizer, _ = configure(tiny_model().model.named_parameters(), Optimization(optimizer="muon"), 10, device)
        return optimizer.muon.ns_dtype

    cpu(AMX_CPU)
    assert precision.bf16_is_fast("cpu") and ns_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not precision.bf16_is_fast("cpu") and ns_dtype("cpu") == torch.float32
    for cap, fast in (((9, 0), True), ((7, 5), False), (None, False)):
        monkeypatch.setattr(gpu, "capability", lambda: cap)
        assert precision.bf16_is_fast("cuda") is fast
    update = torch.randn(3, 16, 48, generator=torch.Generator().manual_seed(0))
    coefficients = (3.4445, -4.775, 2.0315)
    fp32, bf16 = (newton_schulz(update, coefficients, 5, 1e-7, dtype) for dtype in (torch.float32, torch.bfloat16))
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(bf16.float(), fp32, atol=0.05, rtol=0.05)  # the same update, to bf16's rounding
