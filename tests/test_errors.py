"""Bad input ends `python -m tinystories` with one line naming the file or option, and a non-zero exit."""

import copy
import json
import os
import re

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import ROOT, fit_args
from tinystories.__main__ import main
from tinystories.cli import cli_main
from tinystories.model import TinyStoriesLM
from tinystories.synthetic import generate_stories
from tinystories.tokenizer import load_tokenizer, train_bpe


def fit(tmp_path, tokenizer, *extra):
    return ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--data.tokenizer", str(tokenizer), "--trainer.max_steps", "1", "--model.compile", "false", *extra]


def assert_one_line(exit_: SystemExit, expected: str) -> None:
    message = str(exit_.code)
    assert message.startswith("error: ") and expected in message and "\n" not in message, message


def file_with(tmp_path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


TYPO = b"model:\n  architecture:\n    hidden_sise: 64\n"


def under_a_file(tmp_path, name: str) -> str:
    """A path whose parent is a regular file: no one can create it, root included (chmod does not stop root)."""
    return file_with(tmp_path, "f", b"x") + "/" + name


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
    ("negative learning rate", lambda t, tok: fit(t, tok, "--model.optimization.learning_rate", "-1"),
     "model.optimization.learning_rate is -1"),
    ("zero embedding learning rate", lambda t, tok: fit(t, tok, "--model.optimization.embedding_learning_rate", "0"),
     "model.optimization.embedding_learning_rate is 0.0"),
    ("decay fraction above 1", lambda t, tok: fit(t, tok, "--model.optimization.decay_fraction", "1.5"),
     "model.optimization.decay_fraction is 1.5"),
    ("invalid UTF-8", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.txt", b"Tom \xff ran.\n")),
     "train.txt: not UTF-8"),
    ("no text field", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.jsonl", b'{"story": "x"}\n')),
     "no 'text' field"),
    ("not JSON", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.jsonl", b"{not json\n")),
     "train.jsonl: could not be read as json"),
    ("empty split", lambda t, tok: fit(t, tok, "--data.train_split", "train[:0]"), "no stories"),
    ("empty .txt", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.txt", b"")),
     "train.txt: empty file (0 bytes)"),
    ("empty .jsonl", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.jsonl", b"")),
     "train.jsonl: empty file (0 bytes)"),
    ("only separators", lambda t, tok: fit(t, tok, "--data.dataset", folder_with(t, "train.txt", b"<|endoftext|>\n")),
     "train.txt: no stories, only blank and <|endoftext|> lines"),
    ("corrupt tokenizer.json", lambda t, tok: fit(t, folder_with(t, "tokenizer.json", b"{not json")),
     "cannot be loaded (JSONDecodeError"),
    ("tokenizer.json of another shape", lambda t, tok: fit(t, folder_with(t, "tokenizer.json", b'{"a": 1}')),
     "cannot be loaded (KeyError"),
    ("no tokenizer files", lambda t, tok: fit(t, folder_with(t, "notes.txt", b"x")),
     "no tokenizer files in this folder"),
    ("unknown option in YAML", lambda t, tok: fit(t, tok, "--config", file_with(t, "typo.yaml", TYPO)),
     "typo.yaml: unknown option model.architecture.hidden_sise; did you mean model.architecture.hidden_size?"),
    ("unknown option", lambda t, tok: fit(t, tok, "--model.architecture.hidden_sise", "64"),
     "the command line: unknown option model.architecture.hidden_sise; did you mean model.architecture.hidden_size?"),
    ("root dir under a file", lambda t, tok: fit(t, tok, "--trainer.default_root_dir", under_a_file(t, "runs")),
     "--trainer.default_root_dir {t}/f/runs: {t}/f is a file, not a folder"),
    ("checkpoint dir under a file", lambda t, tok: fit(t, tok, "--checkpoint.dirpath", under_a_file(t, "ckpt")),
     "--checkpoint.dirpath {t}/f/ckpt: {t}/f is a file"),
    ("not a checkpoint", lambda t, tok: fit(t, tok, "--ckpt_path", file_with(t, "cut.ckpt", b"PK\x03\x04 cut short")),
     "--ckpt_path {t}/cut.ckpt: truncated or not a checkpoint"),
    ("no such checkpoint", lambda t, tok: fit(t, tok, "--ckpt_path", "nothing.ckpt"),
     "--ckpt_path nothing.ckpt: no such file"),
    ("skips in a row 0", lambda t, tok: fit(t, tok, "--nonfinite_loss.max_skips_in_a_row", "0"),
     "nonfinite_loss.max_skips_in_a_row is 0"),
    ("max_time not DD:HH:MM:SS", lambda t, tok: fit(t, tok, "--trainer.max_time", "30:00"),
     "--trainer.max_time '30:00': give DD:HH:MM:SS"),
    ("no end to the run", lambda t, tok: fit(t, tok, "--trainer.max_steps", "-1", "--trainer.max_epochs", "-1"),
     "--trainer.max_steps -1 with --trainer.max_epochs -1: the learning-rate schedule needs the run's length"),
])
def test_bad_input_is_one_line(case, make_args, expected, tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(make_args(tmp_path, tiny_tokenizer_dir))
    assert_one_line(exit_.value, expected.format(t=tmp_path))
    assert not (tmp_path / "lightning_logs").exists()  # nothing was written


@pytest.fixture(scope="module")
def trained(trained_run, trained_ckpt):
    return trained_run, trained_ckpt


def resume(root, tokenizer, ckpt, *extra):
    return fit_args(root, tokenizer, "--trainer.max_steps", "2", "--data.synthetic_stories", "40", "--ckpt_path",
                    str(ckpt), *extra)


@pytest.mark.slow
def test_checkpoint_of_another_architecture_or_tokenizer_is_one_line(tmp_path, trained, tiny_tokenizer_dir):
    _, ckpt = trained
    with pytest.raises(SystemExit) as exit_:
        main(resume(tmp_path, tiny_tokenizer_dir, ckpt, "--model.architecture.hidden_size", "64"))
    assert_one_line(exit_.value, f"--ckpt_path {ckpt}: was trained with hidden_size 32 (config: 64)")
    other = tmp_path / "tok300"
    train_bpe(generate_stories(100, seed=0), 300, other)
    with pytest.raises(SystemExit) as exit_:
        main(resume(tmp_path, other, ckpt))
    assert_one_line(exit_.value, f"--ckpt_path {ckpt}: was trained with vocab_size 512 (config: 300)")
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_truncated_checkpoint_is_one_line_for_fit_generate_and_export(tmp_path, trained, tiny_tokenizer_dir):
    _, ckpt = trained
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:len(ckpt.read_bytes()) // 2])  # a crash mid-copy
    for args, expected in [
        (resume(tmp_path, tiny_tokenizer_dir, cut), f"--ckpt_path {cut}: truncated or not a checkpoint"),
        (["generate", "--ckpt_path", str(cut), "--prompt", "Tom"], f"--ckpt_path {cut}: truncated or not a checkpoint"),
        (["export", "--ckpt_path", str(cut), "--out_dir", str(tmp_path / "out")],
         f"--ckpt_path {cut}: truncated or not a checkpoint"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert_one_line(exit_.value, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.ckpt"]  # nothing written


def test_export_to_an_unwritable_folder_is_one_line(tmp_path, trained):
    _, ckpt = trained
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "f" / "model")])
    assert_one_line(exit_.value, f"--out_dir {tmp_path}/f/model: {tmp_path}/f is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a folder's mode bits: nothing to refuse")
def test_read_only_root_dir_is_one_line(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit) as exit_:
        main(fit(tmp_path, tiny_tokenizer_dir, "--trainer.default_root_dir", str(tmp_path / "ro")))
    assert_one_line(exit_.value, f"cannot write in {tmp_path}/ro")


def save_without_pad(tmp_path, source, unk: bool):
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), eos_token="</s>",
                                        bos_token="<s>", unk_token="<unk>" if unk else None)
    tokenizer.save_pretrained(tmp_path / "nopad")
    return tmp_path / "nopad"


def test_tokenizer_without_pad_pads_with_unk_and_says_so(tmp_path, tiny_tokenizer_dir, capsys):
    tokenizer = load_tokenizer(str(save_without_pad(tmp_path, tiny_tokenizer_dir, unk=True)))
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0 and tokenizer.padding_side == "left"
    assert "no pad token; padding with its unk token '<unk>'" in capsys.readouterr().out


def test_tokenizer_without_pad_or_unk_is_one_line(tmp_path, tiny_tokenizer_dir):
    folder = save_without_pad(tmp_path, tiny_tokenizer_dir, unk=False)
    with pytest.raises(SystemExit) as exit_:
        main(fit(tmp_path, folder))
    assert_one_line(exit_.value, f"data.tokenizer {folder}: has neither a pad nor an unk token to pad with; add one")


@pytest.mark.slow
def test_story_longer_than_the_context_keeps_its_end_and_trains(tmp_path, tiny_tokenizer_dir):
    story = " ".join(f"Tom saw {n} red birds." for n in range(400))  # about 2,400 tokens against 64
    data = folder_with(tmp_path, "train.txt", story.encode())
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--data.dataset", data, "--data.max_length", "64",
                            "--trainer.max_steps", "1"))
    tokenizer = cli.datamodule.tokenizer
    ids = cli.datamodule.splits["train"][0]["input_ids"].tolist()
    assert ids == tokenizer(story, add_special_tokens=False)["input_ids"][-63:] + [tokenizer.eos_token_id]
    assert cli.trainer.global_step == 1


def nan_at(steps):
    original = TinyStoriesLM.training_step
    seen = {}

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step
        optimizer = self.trainer.optimizers[0]
        seen[step] = ({k: v.clone() for k, v in self.state_dict().items()}, copy.deepcopy(optimizer.state_dict()))
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if step in steps else loss

    return training_step, seen


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and all(assert_same(x, y) is None for x, y in zip(a, b))
    else:
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.slow
def test_skip_policy_leaves_weights_and_optimizer_state_untouched(tmp_path, tiny_tokenizer_dir, monkeypatch, capsys):
    training_step, seen = nan_at({3})
    monkeypatch.setattr(TinyStoriesLM, "training_step", training_step)
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "6", "--nonfinite_loss.action", "skip",
                            "--trainer.log_every_n_steps", "1"))
    weights_before, optimizer_before = seen[3]  # entering the 4th step, whose loss is NaN
    weights_after, optimizer_after = seen[4]
    assert_same(weights_after, weights_before)
    assert_same(optimizer_after["state"], optimizer_before["state"])  # moments and step count
    assert not torch.equal(seen[5][0]["model.lm_head.weight"], weights_after["model.lm_head.weight"])  # trains on
    assert cli.trainer.global_step == 6
    assert float(cli.trainer.callback_metrics["train/skipped_batches"]) == 1
    assert "step 4: training loss NaN or infinite; batch skipped" in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values() if w.is_floating_point())


@pytest.mark.slow
def test_skip_policy_stops_after_too_many_bad_batches_in_a_row(tmp_path, tiny_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(TinyStoriesLM, "training_step", nan_at(set(range(2, 100)))[0])
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "20", "--nonfinite_loss.action", "skip",
                      "--nonfinite_loss.max_skips_in_a_row", "3"))
    assert_one_line(exit_.value, "NaN or infinite for 3 batches in a row (steps 3 to 5, "
                                 "nonfinite_loss.max_skips_in_a_row); the weights are those of step 2")


class Payload:
    """Unpickling this with weights_only=False would create `marker`: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, tiny_tokenizer_dir):
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "ran"
    torch.save({"state_dict": {}, "hyper_parameters": {"hidden_size": Payload(marker)}}, evil)
    for args in (fit(tmp_path, tiny_tokenizer_dir, "--ckpt_path", str(evil)),
                 ["generate", "--ckpt_path", str(evil), "--prompt", "Tom"],
                 ["export", "--ckpt_path", str(evil), "--out_dir", str(tmp_path / "out")]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert_one_line(exit_.value, f"--ckpt_path {evil}: not a readable checkpoint")
        assert "Weights only load failed" in str(exit_.value.code) and not marker.exists()


@pytest.mark.slow
def test_resume_loads_the_checkpoint_with_weights_only(tmp_path, trained, monkeypatch):
    root, _ = trained
    calls, load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    main(["fit", "--config", str(root / "config.yaml"), "--ckpt_path", "last",
          "--trainer.max_steps", "122", "--trainer.default_root_dir", str(tmp_path)])
    assert calls and all(w is True for w in calls), calls  # our checks, Lightning's restore


def test_package_runs_no_code_from_files():
    """No unpickling without weights_only, no remote code, no eval/exec: a data or model file is only ever data."""
    forbidden = re.compile(r"weights_only\s*=\s*False|trust_remote_code\s*=\s*True|\bimport pickle|yaml\.load\("
                           r"|(?<![.\w])(eval|exec)\(|allow_pickle\s*=\s*True")
    for path in sorted((ROOT / "tinystories").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not forbidden.search(line), f"{path.name}:{n}: {line.strip()}"
