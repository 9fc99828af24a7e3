"""The benchmarks' `--smoke` runs, in the suite.

`benchmarks/gpu_check.py --smoke`: the first-GPU check's whole path (two fits, stories, export) on a CPU at the
precision `null` picks there; it needs
nothing from ../shared (synthetic stories and a BPE the data module trains on them). `benchmarks/recipe.py --smoke`:
the recipe, the port and the fast config's budget search for a few steps each, on ../shared's stories.
"""
import json

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_shared

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TINYSTORIES_CACHE": str(cache),
           "HF_DATASETS_CACHE": str(cache / "hf-datasets")}
    out_dir = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out_dir", str(out_dir),
                           "--peak_flops", "1e12"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^device: CPU; compute capability none; torch \S+, CUDA \S+, cuDNN \S+$", out, re.M), out
    assert re.search(r"^precision: (bf16-mixed|32-true) \(CPU .*; what trainer.precision: null picks here\)$", out,
                     re.M), out
    assert re.search(r"^attention: no NaN or inf in outputs, loss or gradients \(left-padded bfloat16 .* lengths 448 "
                     r"and 512", out, re.M), out
    # each run's figures as soon as it ends: the recipe's before the fast run starts, not lost if that one fails
    assert out.index("\n(b) recipe: ") < out.index("\n=== (a) fast: ") < out.index("\n(a) fast: ")
    for run in ("(a) fast", "(b) recipe"):
        report = out[out.index(f"\n{run}: "):]
        assert re.search(r"real tokens/s: [\d,]+ \(median", report), report
        assert re.search(r"MFU: [\d.e+-]+% of 1e\+12 FLOP/s", report), report
        assert re.search(r"peak memory: \d+\.\d+ GiB", report), report
        assert re.search(r"val/bpb: \d+\.\d{4}", report), report
    assert re.search(r"^ratio=\d+\.\d\d ", out, re.M), out
    stories = re.findall(r"^story \d: (.+)$", out, re.M)
    assert len(stories) == 2 and stories[0].startswith("Once upon a time"), out
    reloaded = re.search(r"^export reloaded: LlamaForCausalLM, [\d,]+ parameters .*: (\S+)$", out, re.M)
    assert reloaded and float(reloaded[1]) < 1e-4, out  # the export holds the checkpoint's weights
    assert (out_dir / "export" / "config.json").is_file()
    assert (out_dir / "a" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@needs_shared
def test_recipe_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/recipe.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    first = re.match(r"CPU class: (.+); precision: (bf16-mixed|32-true) \(CPU .*\)\n", text)
    assert first, text[:500]  # the class and the precision null picks, on the first line
    shipped = first[2] == "bf16-mixed"  # then the port runs a second time, as shipped, with a fidelity of its own
    for arm in ("(a) recipe", "(b) port", *(["(b2) port as shipped"] if shipped else []), "(c) fast"):
        assert re.search(re.escape(arm) + r".*\n    [\d,]+ real tokens, \d+ steps, [\d.]+ s training wall time .*"
                         r"[\d,]+ real tokens/s, final held-out loss \d+\.\d{4}", text), text
    fidelity = float(re.search(r"^fidelity=(\d+\.\d+)$", text, re.M)[1])
    assert bool(re.search(r"^fidelity_bf16=\d+\.\d+$", text, re.M)) == shipped, text
    time_ratio = float(re.search(r"^time_ratio=(\d+\.\d+)$", text, re.M)[1])
    curves = json.loads((out / "curves.json").read_text())
    a, b, c = (curves["runs"][k] for k in "abc")
    assert fidelity == pytest.approx(b["loss"] / a["loss"], abs=1e-4)
    assert time_ratio == pytest.approx(a["seconds"] / c["seconds"], rel=1e-2)
    for run in (a, b, c):
        points = run["curve"]
        assert points[0]["step"] == 0 and points[0]["seconds"] == 0 and points[-1]["step"] == run["steps"]
        assert all(p["seconds"] <= q["seconds"] and p["tokens"] < q["tokens"] for p, q in zip(points, points[1:]))
        assert points[-1]["loss"] < points[0]["loss"]  # every arm learns in its few steps
    assert a["curve"][0]["loss"] == b["curve"][0]["loss"] == c["curve"][0]["loss"]  # the same initial weights
    assert len(curves["fast_tries"]) == 2 and (out / "curves.png").stat().st_size > 10_000
    assert (out / "fast.ckpt").is_file()
    again = subprocess.run([sys.executable, "benchmarks/recipe.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "is not empty" in again.stderr + again.stdout  # nothing is overwritten


@pytest.mark.slow
@needs_shared
def test_gguf_parity_quick_check(tmp_path):
    """`benchmarks/gguf_parity.py` at its quick-check size: both models, every tensor type, both speed tables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    proc = subprocess.run([sys.executable, "benchmarks/gguf_parity.py", "--demo_steps", "20", "--recipe_steps", "2",
                           "--stories", "50", "--prompts", "4", "--new_tokens", "16", "--rounds", "1", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert re.match(r"CPU class: .+; precision: (bf16-mixed|32-true) ", text), text[:300]
    for name in ("demo", "recipe"):
        assert f"{name}: " in text and "tokenization: 50 of 50 stories to the same ids" in text
    rows = re.findall(r"^  (f32 exact|f32|f16|bf16|q8_0) +([\d.]+) +(\d+) +(\d+) +(\d+) +(\d+) +([\d.]+)$", text, re.M)
    assert [r[0] for r in rows] == ["f32 exact", "f32", "f16", "bf16", "q8_0"] * 2, text
    for row in rows:
        assert int(row[2]) + int(row[3]) + int(row[4]) == 4
    assert rows[0][2] == rows[5][2] == "4"  # exact f32: every prompt the same
    assert len(re.findall(r"^ratio=\d+\.\d+ ", text, re.M)) == 2, text
