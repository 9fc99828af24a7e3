"""Every file in configs/ parses, and the reference config builds the 19.5M model from local files."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import LLAMA_TOKENIZER, ROOT, TINYSTORIES, needs_shared
from tinystories.cli import cli_main
from tinystories.errors import UserError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {"demo.yaml", "tinystories-20m.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["architecture"] == {**printed["model"]["architecture"],
                                                **yaml.safe_load(config.read_text())["model"]["architecture"]}


def test_unknown_config_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_sise: 64\n")
    with pytest.raises(UserError, match="unknown option model.hidden_sise"):
        cli_main(["fit", "--config", str(bad), "--print_config"])


@needs_shared
@pytest.mark.parametrize("name", ["tinystories-20m.yaml", "tinystories-20m-fast.yaml"])
def test_reference_configs_build_the_19_5m_model_offline(name, tmp_path):
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / name),
                    "--data.dataset", str(TINYSTORIES), "--data.tokenizer", str(LLAMA_TOKENIZER),
                    "--data.train_split", "train[:8]", "--data.val_split", "validation[:4]",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu"], run=False)
    model = cli.model
    assert model.num_parameters() == 19_532_032
    architecture = model.hparams.architecture
    assert (architecture["vocab_size"], architecture["pad_token_id"], architecture["eos_token_id"]) == (32000, 0, 2)
    assert model.model.config.intermediate_size == 768
    assert cli.trainer.max_epochs == 2 and cli.trainer.checkpoint_callback.save_top_k == 2
    fast = name.endswith("-fast.yaml")  # the same model; only how it is fed and stepped differs
    assert cli.datamodule.hparams.batch_size == (128 if fast else 4)
    assert cli.datamodule.hparams.packing is fast and model.hparams.compile is fast


def test_fit_help_describes_the_projects_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for description in ("Width of the residual stream.", "Samples per device per step.",
                        "Story beginnings continued at each validation", "On a NaN or infinite training loss",
                        "Write `last.ckpt` after every this many optimizer steps"):
        assert description in shown
