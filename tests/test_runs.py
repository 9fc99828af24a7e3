"""Named runs (`--run NAME`: `lightning_logs/NAME`), resumed in their own folder; `validate` and `test` read them."""

import pytest
import torch
import yaml

from tests.conftest import fit_args
from tinystories.__main__ import main
from tinystories.cli import cli_main
from tinystories.errors import UserError


def error_of(args: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(args)
    return str(done.value.code)


@pytest.mark.slow  # three tiny fits, a validate and a test: ~15 s
def test_a_named_run_is_refused_when_used_resumed_in_its_folder_and_scored(tmp_path, tiny_tokenizer_dir,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = fit_args(tmp_path, tiny_tokenizer_dir, "--run", "tiny", "--trainer.max_steps", "4")
    main(first)
    run = tmp_path / "lightning_logs" / "tiny"
    config = (run / "config.yaml").read_bytes()
    assert yaml.safe_load(config)["run"] == "tiny" and (run / "checkpoints" / "last.ckpt").is_file()

    assert error_of(first) == (f"error: --run tiny: {run} holds a run already; resume it with --ckpt_path last, or "
                               "give another run name (nothing was written)")
    assert (run / "config.yaml").read_bytes() == config

    main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps", "6"])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 6  # the config it went on with
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["tiny"]

    config = (run / "config.yaml").read_bytes()
    scored = {}
    for verb in ("validate", "test"):
        cli = cli_main([verb, "--config", str(run / "config.yaml"), "--ckpt_path", "last"])
        scored[verb] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert set(scored["test"]) == {"test/loss", "test/ppl", "test/bpb"}
    # data.test_split null scores the validation split, so both verbs give the same numbers.
    assert scored["test"] == {k.replace("val/", "test/"): v for k, v in scored["validate"].items()}
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert scored["validate"]["val/loss"] == pytest.approx(checkpoint["val_metrics"]["val/loss"], rel=1e-5)
    assert (run / "config.yaml").read_bytes() == config  # scoring a run leaves its config as it is
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["tiny"]  # they logged into the run

    assert "--ckpt_path last: --run other has no" in error_of(
        ["validate", "--config", str(run / "config.yaml"), "--run", "other", "--ckpt_path", "last"])


def test_bad_run_names_and_a_run_without_a_logger_are_one_line(tmp_path, tiny_tokenizer_dir):
    for name in ("a/b", "../up", ".hidden", ""):
        with pytest.raises(UserError, match="a run name is letters, digits"):
            cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--run", name), run=False)
    with pytest.raises(UserError, match="--run x names the default logger's folder; with --trainer.logger false"):
        cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--run", "x", "--trainer.logger", "false"), run=False)


@pytest.mark.slow  # a tiny fit and two validations: ~8 s
def test_without_a_logger_validate_twice_in_one_folder_and_fit_twice_is_refused(tmp_path, tiny_tokenizer_dir):
    no_logger = ["--trainer.logger", "false", "--trainer.max_steps", "2"]
    main(fit_args(tmp_path, tiny_tokenizer_dir, *no_logger))
    config = (tmp_path / "config.yaml").read_bytes()
    validate = ["validate", *fit_args(tmp_path, tiny_tokenizer_dir, *no_logger)[1:], "--ckpt_path",
                str(tmp_path / "checkpoints" / "last.ckpt")]
    main(validate)
    main(validate)  # Lightning's SaveConfigCallback would stop here with a traceback: config.yaml exists
    assert (tmp_path / "config.yaml").read_bytes() == config  # the fit's config, not validate's
    assert error_of(fit_args(tmp_path, tiny_tokenizer_dir, *no_logger)) == (
        f"error: --trainer.default_root_dir: {tmp_path} holds a run already; resume it with --ckpt_path last, or "
        "give another folder (nothing was written)")
