"""Shared fixtures: offline data only (the project's synthetic stories, ../shared/data), caches in temp folders."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINYSTORIES = SHARED / "tinystories"
LLAMA_TOKENIZER = SHARED / "llama2-tokenizer"

# Never the network: the hub libraries fail fast instead of trying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# A 2-layer, hidden-32 model: seconds per run on 2 cores.
TINY_MODEL = [
    "--model.hidden_size", "32", "--model.num_hidden_layers", "2", "--model.num_attention_heads", "4",
    "--model.num_key_value_heads", "2", "--model.max_position_embeddings", "256",
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


def fit_args(root: Path, tokenizer_dir: Path, *extra: str) -> list[str]:
    """A `fit` of the tiny model on synthetic stories, writing under `root`."""
    return [
        "fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.dataset", "synthetic", "--data.synthetic_stories", "400",
        "--data.tokenizer", str(tokenizer_dir), "--data.max_length", "128", "--data.batch_size", "8",
        "--model.learning_rate", "3e-3", "--samples.prompts", "[]", *TINY_MODEL, *extra,
    ]
