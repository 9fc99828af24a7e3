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
    for verb in ("fit", "validate", "test", "tokenizer", "generate", "evaluate", "export"):
        assert f"  {verb} " in shown and SUMMARY[verb] in shown
    assert "predict" not in shown


def test_predict_says_which_verb_writes_stories():
    with pytest.raises(SystemExit, match=r"^error: `predict`: stories are written by `python -m tinystories generate "):
        main(["predict", "--ckpt_path", "last"])


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
    assert shown.startswith("usage: python -m tinystories fit [-c CONFIG]") and "--disable_callbacks" in shown


def help_of(verb: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", ["fit", "validate", "test", "generate", "evaluate", "export", "tokenizer"])
def test_help_reads_cleanly(verb, capsys):
    shown = help_of(verb, capsys)
    flat = " ".join(shown.split())
    assert shown.startswith(f"usage: python -m tinystories {verb} ") and "[options]" not in shown
    assert "<class" not in shown and "Union[str, list[str], null]" not in flat and "Path" not in flat.replace(
        "Path to a configuration file", "")
    titles = [line for line in shown.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert all(not title.endswith((" the:", " that:", " to:")) for title in titles), titles
    assert not any(line.strip().startswith("...") for line in shown.splitlines())


def test_help_describes_what_this_project_does(capsys):
    fit = " ".join(help_of("fit", capsys).split())
    ckpt_path = fit[fit.index("--ckpt_path CKPT_PATH "):fit.index("--weights_only {")]
    assert "hpc" not in ckpt_path and "registry" not in ckpt_path and "previous ``trainer.fit`` call" not in fit
    assert "`last`: looked up on disk, in the run named by --run" in fit
    assert "null (the default) means true here" in fit[fit.index("--weights_only {"):]
    assert "Null (the default) picks one for the hardware" in fit and "Default: ``'32-true'``" not in fit
    assert "null: checkpoints/ in the run's folder" in fit and "do not save anything" not in fit
    assert "Keep the best checkpoints by val/loss" in fit and "--run RUN" in fit
    evaluate = " ".join(help_of("evaluate", capsys).split())
    assert evaluate.count("Required unless --compare is given") == 2
    generate = " ".join(help_of("generate", capsys).split())
    assert "--prompt PROMPT, --prompt+ PROMPT A story beginning; repeat the option for more prompts. (type: str, " \
           "repeatable" in generate and "(required, type: str)" in generate


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
