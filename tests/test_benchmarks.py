"""`benchmarks/gpu_check.py --smoke`: the first-GPU check's whole path (two fits, stories, export) on a CPU.

It needs nothing from ../shared: synthetic stories and a BPE the data module trains on them.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
