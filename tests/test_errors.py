"""Bad input ends `python -m tinystories` with one line naming the file or option, and a non-zero exit."""

import json

import pytest

from tests.conftest import ROOT
from tinystories.__main__ import main


def fit(tmp_path, tokenizer, *extra):
    return ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--data.tokenizer", str(tokenizer), "--trainer.max_steps", "1", *extra]


def folder_with(tmp_path, name: str, content: bytes):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / name).write_bytes(content)
    (tmp_path / "data" / "valid.jsonl").write_text(json.dumps({"text": "Tom ran home."}) + "\n")
    return str(tmp_path / "data")


@pytest.mark.parametrize("case, make_args, expected", [
    ("missing data folder", lambda t, tok: fit(t, tok, "--data.dataset", "./no-such-folder"),
     "data.dataset ./no-such-folder: no such folder"),
    ("missing tokenizer", lambda t, tok: fit(t, "./no-such-tokenizer"), "data.tokenizer ./no-such-tokenizer: no such"),
    ("batch size 0", lambda t, tok: fit(t, tok, "--data.batch_size", "0"), "data.batch_size is 0"),
    ("negative learning rate", lambda t, tok: fit(t, tok, "--model.learning_rate", "-1"), "model.learning_rate is -1"),
    ("invalid UTF-8", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.txt", b"Tom \xff ran.\n")),
     "train.txt: not UTF-8"),
    ("no text field", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.jsonl", b'{"story": "x"}\n')),
     "no 'text' field"),
    ("not JSON", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.jsonl", b"{not json\n")),
     "train.jsonl: could not be read as json"),
    ("empty split", lambda t, tok: fit(t, tok, "--data.train_split", "train[:0]"), "no stories"),
])
def test_bad_input_is_one_line(case, make_args, expected, tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(make_args(tmp_path, tiny_tokenizer_dir))
    message = str(exit_.value.code)
    assert message.startswith("error: ") and expected in message and "\n" not in message, message
    assert not (tmp_path / "lightning_logs").exists()  # nothing was written
