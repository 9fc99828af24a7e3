"""A hub name without the hub: one line that says the hub could not be reached and how to give a local copy, at
once when HF_HUB_OFFLINE is set (as in every test: tests/conftest.py)."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

SCRIPT = """
from tinystories.__main__ import main
for args in (["fit", "--data.dataset", "noanabeshima/TinyStoriesV2", "--data.train_split", "train[:1%]"],
             ["fit", "--data.synthetic_stories", "100", "--data.tokenizer", "NousResearch/Llama-2-7b-hf"]):
    try:
        main(args)
    except SystemExit as done:
        print(done.code)
"""


@pytest.mark.slow  # a fresh interpreter with an empty hub cache: ~10 s
def test_a_hub_name_offline_fails_fast_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TINYSTORIES_CACHE": str(tmp_path / "cache"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert time.perf_counter() - start < 60  # no retries: online, each name would take ~25 s of them
    errors = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: data.dataset noanabeshima/TinyStoriesV2: the Hugging Face hub could not be reached (HF_HUB_OFFLINE is "
        "set) and the hub cache has no copy; give a local copy instead (a folder of train/valid .txt, .jsonl or "
        ".parquet files, or one saved with save_to_disk), or run once with the network to cache it",
        "error: data.tokenizer NousResearch/Llama-2-7b-hf: the Hugging Face hub could not be reached (HF_HUB_OFFLINE "
        "is set) and the hub cache has no copy; give a local copy instead (a folder written by save_pretrained, e.g. "
        "by `hf download NousResearch/Llama-2-7b-hf --local-dir DIR`), or run once with the network to cache it",
    ], done.stdout + done.stderr
