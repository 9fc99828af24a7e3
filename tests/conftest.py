"""Shared fixtures: offline data only (the project's synthetic stories, ../shared/data), caches in temp folders."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINYSTORIES = SHARED / "tinystories"
LLAMA_TOKENIZER = SHARED / "llama2-tokenizer"
# Real stories and the LLaMA-2 tokenizer sit beside the repository in CI; a plain clone has no ../shared.
needs_shared = pytest.mark.skipif(not (TINYSTORIES.is_dir() and LLAMA_TOKENIZER.is_dir()),
                                  reason=f"needs the real data in {SHARED} (../shared/data beside the repository)")

# Never the network: the hub libraries fail fast instead of trying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# A 2-layer, hidden-32 model: seconds per run on 2 cores.
TINY_MODEL = [
    "--model.architecture.hidden_size", "32", "--model.architecture.num_hidden_layers", "2",
    "--model.architecture.num_attention_heads", "4", "--model.architecture.num_key_value_heads", "2",
    "--model.architecture.max_position_embeddings", "256",
]


@pytest.fixture(autouse=True, scope="session")
def cache_dir(tmp_path_factory):
    """Tokenized data and trained tokenizers go to one temp folder for the session (../shared is read-only)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["TINYSTORIES_CACHE"] = str(path)
    os.environ["HF_DATASETS_CACHE"] = str(path / "hf-datasets")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A 512-token BPE trained on 500 synthetic stories, made by the project itself."""
    from tinystories.synthetic import generate_stories
    from tinystories.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tok") / "bpe512"
    train_bpe(generate_stories(500, seed=0), 512, out)
    return out


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=300)


def tiny_model(shape: dict = TINY, compile: bool = False, **options):
    """A `TinyStoriesLM` of `shape`; `options` name `Architecture` or `Optimization` fields."""
    from dataclasses import fields

    from tinystories.model import Architecture, TinyStoriesLM
    from tinystories.optim import Optimization

    names = {f.name for f in fields(Architecture)}
    architecture = Architecture(**{**shape, **{k: v for k, v in options.items() if k in names}})
    optimization = Optimization(**{k: v for k, v in options.items() if k not in names})
    return TinyStoriesLM(architecture, optimization, compile=compile)


def fit_args(root: Path, tokenizer_dir: Path, *extra: str) -> list[str]:
    """A `fit` of the tiny model on synthetic stories, writing under `root`."""
    return [
        "fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.dataset", "synthetic", "--data.synthetic_stories", "400",
        "--data.tokenizer", str(tokenizer_dir), "--data.max_length", "128", "--data.batch_size", "8",
        "--model.optimization.learning_rate", "3e-3", "--samples.prompts", "[]", *TINY_MODEL, *extra,
    ]


SAMPLE_PROMPTS = ["Once upon a time", "Tom and Lily"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_tokenizer_dir, cache_dir) -> Path:
    """The suite's one trained checkpoint: 120 steps of the tiny model (~5 s), validated and sampled at steps 60 and
    120; its `lightning_logs/version_0` folder. Tests read it and write elsewhere."""
    from tinystories.cli import cli_main

    root = tmp_path_factory.mktemp("trained")
    cli_main(fit_args(root, tiny_tokenizer_dir, "--trainer.max_steps", "120", "--trainer.val_check_interval", "60",
                      "--trainer.check_val_every_n_epoch", "null", "--model.optimization.learning_rate", "1e-2",
                      "--model.optimization.warmup_steps", "10", "--samples.prompts", json.dumps(SAMPLE_PROMPTS),
                      "--samples.max_new_tokens", "20"))
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def trained_ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"
