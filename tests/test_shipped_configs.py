"""Every file in configs/ trains as shipped: `fit` a few steps, resume one step from last.ckpt, `validate`, `generate`.

Only the data source, the step count and the run folder change (each config runs in a temporary folder, with
`--run` named after it); its precision (null: picked for this CPU), optimizer, clipping, compile, checkpoint cadence
and callbacks are its own. Configs with a hub tokenizer (the 19.5M ones, LLaMA-2) train on ../shared's real stories
and tokenizer; the others on stories from the project's generator. A config whose `model.init_from` names
`lightning_logs/NAME/...` starts from the run configs/NAME.yaml makes, trained the same way first. A new config is
covered without editing this file. Then each config's `fit` once more with the other CPU precision forced
(bf16-mixed where null picks 32-true, and the reverse; Lightning runs 16-mixed on a CPU as bf16-mixed).
"""

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import LLAMA_TOKENIZER, ROOT, TINYSTORIES, needs_shared
from tinystories import precision
from tinystories.__main__ import main
from tinystories.synthetic import generate_stories

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
INIT_RUN = re.compile(r"^lightning_logs/([^/]+)/")


def shipped(path: Path):
    config = yaml.safe_load(path.read_text())
    marks = [pytest.mark.slow] + ([needs_shared] if config["data"].get("tokenizer") else [])
    return pytest.param(path, marks=marks, id=path.stem)


@pytest.fixture
def stories(tmp_path, monkeypatch):
    """A local story folder (train.txt, valid.txt) from the project's generator; the test's working directory."""
    folder = tmp_path / "stories"
    folder.mkdir()
    for name, n, seed in (("train.txt", 400, 0), ("valid.txt", 40, 1)):
        (folder / name).write_text("\n<|endoftext|>\n".join(generate_stories(n, seed=seed)) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return folder


def data_source(config: dict, stories: Path) -> list[str]:
    """The only data options: local stories, and LLaMA-2 from ../shared where the config names a hub tokenizer."""
    if config["data"].get("tokenizer"):
        return ["--data.dataset", str(TINYSTORIES), "--data.tokenizer", str(LLAMA_TOKENIZER),
                "--data.train_split", "train[:48]", "--data.val_split", "validation[:8]"]
    return ["--data.dataset", str(stories)]


def fit(path: Path, stories: Path, run: str, steps: int, *extra: str) -> None:
    config = yaml.safe_load(path.read_text())
    init_from = (config.get("model") or {}).get("init_from")
    if init_from and (found := INIT_RUN.match(init_from)) and not Path(init_from).exists():
        fit(ROOT / "configs" / f"{found[1]}.yaml", stories, found[1], steps)  # e.g. the demo before its fine-tune
    main(["fit", "--config", str(path), "--run", run, *data_source(config, stories),
          "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", *extra])


def last(run: str) -> dict:
    return torch.load(Path("lightning_logs") / run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("path", [shipped(p) for p in CONFIGS])
def test_config_trains_resumes_validates_and_generates_as_shipped(path, stories, capsys):
    fit(path, stories, "shipped", 2)
    saved = last("shipped")
    arch = saved["hyper_parameters"]["architecture"]
    picked = precision.pick("cpu", arch["hidden_size"], arch["intermediate_size"]).precision
    assert saved["global_step"] == 2 and saved["precision"] == picked
    assert f"precision: {picked} (" in capsys.readouterr().out

    config = "lightning_logs/shipped/config.yaml"
    main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert last("shipped")["global_step"] == 3
    capsys.readouterr()

    main(["validate", "--config", config, "--ckpt_path", "last"])
    shown = capsys.readouterr().out
    loss = re.search(r"val/loss\W+(\S+)", shown)
    assert loss and 0 < float(loss[1]) < 20, shown

    out = Path("stories.jsonl")
    main(["generate", "--ckpt_path", "lightning_logs/shipped/checkpoints/last.ckpt", "--prompt", "Once upon a time",
          "--max_new_tokens", "12", "--seed", "0", "--output", str(out)])
    made = [yaml.safe_load(line) for line in out.read_text().splitlines()]
    assert len(made) == 1 and made[0]["prompt"] == "Once upon a time" and made[0]["completion"]


@pytest.mark.parametrize("path", [shipped(p) for p in CONFIGS])
def test_config_trains_with_the_other_cpu_precision_forced(path, stories):
    arch = yaml.safe_load(path.read_text())["model"]["architecture"]
    picked = precision.pick("cpu", arch["hidden_size"], arch.get("intermediate_size")).precision
    other = "32-true" if picked == "bf16-mixed" else "bf16-mixed"
    fit(path, stories, "forced", 2, "--trainer.precision", other)
    saved = last("forced")
    assert saved["global_step"] == 2 and saved["precision"] == other
