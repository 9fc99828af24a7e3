"""The front door (`python -m tinystories`), and the default callbacks: each can be turned off from the YAML."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, fit_args
from tinystories.__main__ import SUMMARY, main
from tinystories.callbacks import ReuseFreedMemory, StepProgressBar, ValidateAtEnd
from tinystories.cli import cli_main
from tinystories.errors import UserError


def test_help_lists_every_verb_with_one_line(capsys):
    main(["--help"])
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m tinystories VERB")
    for verb in ("fit", "validate", "test", "predict", "tokenizer", "generate", "evaluate", "export"):
        assert f"  {verb} " in shown and SUMMARY[verb] in shown


@pytest.mark.slow  # a fresh interpreter: ~5 s
def test_bare_command_shows_the_verbs_and_fails():
    done = subprocess.run([sys.executable, "-m", "tinystories"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "generate " in done.stdout and "evaluate " in done.stdout


def test_unknown_verb_is_one_line():
    with pytest.raises(SystemExit, match=r"^error: unknown verb 'trian'; it must be one of fit, validate"):
        main(["trian"])


def test_fit_help_names_the_command_users_type(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m tinystories [options] fit") and "--disable_callbacks" in shown


def callbacks(tmp_path, tokenizer, *extra) -> list[type]:
    return [type(c) for c in cli_main(fit_args(tmp_path, tokenizer, *extra), run=False).trainer.callbacks]


def test_default_callbacks_can_each_be_turned_off(tmp_path, tiny_tokenizer_dir):
    on = callbacks(tmp_path, tiny_tokenizer_dir, "--trainer.enable_progress_bar", "true")
    assert {ValidateAtEnd, ReuseFreedMemory, StepProgressBar} <= set(on)
    names = {c.__name__ for c in on}
    assert {"ModelCheckpoint", "PeriodicCheckpoint", "LearningRateMonitor", "SampleStories", "Throughput",
            "StopOnNonFiniteLoss"} <= names
    off = callbacks(tmp_path, tiny_tokenizer_dir, "--trainer.enable_progress_bar", "true", "--disable_callbacks",
                    "[validate_at_end, reuse_freed_memory, samples, throughput, nonfinite_loss, lr_monitor, "
                    "last_checkpoint, progress_bar]")
    assert not {ValidateAtEnd, ReuseFreedMemory, StepProgressBar} & set(off)
    assert not {"PeriodicCheckpoint", "LearningRateMonitor", "SampleStories", "Throughput",
                "StopOnNonFiniteLoss"} & {c.__name__ for c in off}
    assert "TQDMProgressBar" in {c.__name__ for c in off} or "RichProgressBar" in {c.__name__ for c in off}
    no_ckpt = callbacks(tmp_path, tiny_tokenizer_dir, "--trainer.enable_checkpointing", "false")
    assert "ModelCheckpoint" not in {c.__name__ for c in no_ckpt}
    with pytest.raises(UserError, match="disable_callbacks: unknown callback sample; the default callbacks are "):
        callbacks(tmp_path, tiny_tokenizer_dir, "--disable_callbacks", "[sample]")


def test_progress_bar_counts_steps_not_epochs(tmp_path, tiny_tokenizer_dir):
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.enable_progress_bar", "true",
                            "--trainer.max_steps", "7"), run=False)
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar))
    assert cli.trainer.max_epochs is None  # fit makes it -1, which Lightning's rich bar shows as "Epoch 0/-2"
    assert bar.get_metrics(cli.trainer, cli.model)["step"] == "0/7"
