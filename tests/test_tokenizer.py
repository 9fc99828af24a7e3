import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from tests.conftest import ROOT
from tinystories.synthetic import generate_stories
from tinystories.tokenizer import TokenizerError, load_tokenizer, token_bytes


def test_trained_bpe_loads_with_autotokenizer_and_has_llama_special_ids(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert len(tokenizer) == 512
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]


def test_trained_bpe_round_trips_text_exactly(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    for text in [*generate_stories(20, seed=7), "  Two spaces,\ttabs\nand caf\u00e9 \u2014 \U0001f600 emoji."]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert 0 not in ids  # byte-level: never <unk>
        assert tokenizer.decode(ids) == text
        assert sum(token_bytes(tokenizer)[i] for i in ids) == len(text.encode())


def test_tokenizer_verb_trains_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "tok"
    cmd = [sys.executable, "-m", "tinystories", "tokenizer", "--dataset", "synthetic", "--synthetic_stories", "300",
           "--vocab_size", "300", "--out_dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(AutoTokenizer.from_pretrained(str(out))) == 300
    before = (out / "tokenizer.json").read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert (out / "tokenizer.json").read_bytes() == before


def test_tokenizer_help_lists_options_with_descriptions():
    done = subprocess.run([sys.executable, "-m", "tinystories", "tokenizer", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert "--vocab_size" in done.stdout and "Number of tokens" in done.stdout


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no such folder"):
        load_tokenizer(str(tmp_path / "nope"))
