"""The README, run top to bottom: every `python -m tinystories` command of its ```bash blocks, in order, in a fresh
folder, offline, on tiny settings; each command that reads a run finds the one the README made for it.

What is changed, and only that: data sources and tokenizers become local tiny ones (the hub cannot be reached from a
test), the judge is the test's own server, the hub upload a fake, and tiny model and step overrides are appended.
The precision is each config's own (`null`: what this CPU gets); tests/test_shipped_configs.py runs every config as
shipped. A
command the test cannot run here (several devices) is listed, not silently dropped.
"""

import re
import shlex
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml

from tests.conftest import ROOT, TINY_MODEL
from tests.judge_server import MODEL, JudgeServer
from tinystories import export
from tinystories.__main__ import main

README = ROOT / "README.md"
RUN_PATH = re.compile(r"^lightning_logs/([^/]+)/")
FIT = [*TINY_MODEL, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
       "--trainer.check_val_every_n_epoch", "null", "--trainer.max_time", "null", "--trainer.accelerator", "cpu",
       "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--model.compile", "false", "--data.synthetic_stories", "300",
       "--data.tokenizer_vocab_size", "300", "--data.max_length", "64", "--data.batch_size", "4",
       "--samples.prompts", "[]", "--last_checkpoint.every_n_train_steps", "2"]
SAMPLING = ["--max_new_tokens", "8", "--device", "cpu"]


def readme_commands(text: str) -> list[list[str]]:
    """The arguments of each `python -m tinystories ...` line of the README's bash blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("python -m tinystories"):
                commands.append(shlex.split(line, comments=True)[3:])
    return commands


def option(args: list[str], name: str):
    return args[args.index(name) + 1] if name in args else None


class FakeHfApi:
    commits: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        pass

    def create_commit(self, repo_id, operations, **kwargs):
        self.commits.append((repo_id, {op.path_in_repo for op in operations}))


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch, tiny_tokenizer_dir):
    """A folder with the repository's configs, a tiny local story folder and prompt file; the working directory."""
    from tinystories.synthetic import generate_stories

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    stories = tmp_path / "local" / "stories"
    stories.mkdir(parents=True)
    for name, n, seed in (("train.txt", 2000, 0), ("valid.txt", 60, 1)):
        (stories / name).write_text("\n<|endoftext|>\n".join(generate_stories(n, seed=seed)) + "\n", encoding="utf-8")
    (tmp_path / "local" / "prompts.yaml").write_text(yaml.safe_dump(["Once upon a time", "Tom and Lily went"]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export, "hub_token", lambda: "hf_fake")  # HF_HUB_OFFLINE stays set: the upload is a fake
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.commits = []
    return {"--data.dataset": str(stories), "--train_data": str(stories), "--data.tokenizer": str(tiny_tokenizer_dir),
            "prompts": str(tmp_path / "local" / "prompts.yaml"), "instruct_prompts": str(stories)}


def localized(args: list[str], local: dict, judge_url: str) -> list[str]:
    """The README's command with local data, the test's judge, and tiny settings appended."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        value = out[i + 1]
        if arg in ("--data.dataset", "--train_data", "--data.tokenizer") and value != "synthetic":
            out[i + 1] = local[arg]
        elif arg == "--prompts":
            out[i + 1] = local["instruct_prompts" if "--instruct" in out else "prompts"]
        elif arg == "--judge_base_url":
            out[i + 1] = judge_url
        elif arg == "--judge_model":
            out[i + 1] = MODEL
    verb = out[0]
    if verb == "fit" and "--ckpt_path" in out:
        out += ["--trainer.max_steps", "6"]  # a resumed run goes on a few steps
    elif verb == "fit" and "--help" not in out:
        out += FIT
        data = yaml.safe_load(Path(option(out, "--config")).read_text())["data"]
        for name in ("dataset", "tokenizer"):  # a config's hub data set or tokenizer (reference recipe)
            if data.get(name) not in (None, "synthetic") and f"--data.{name}" not in args:
                out += [f"--data.{name}", local[f"--data.{name}"]]
    elif verb == "generate":
        out += SAMPLING
    elif verb == "evaluate" and "--compare" not in out:
        out += SAMPLING + ["--judge_timeout", "1"]
    return out


def run(args: list[str]) -> str:
    """Run a command; its `error: ...` line, or "" when it succeeded (`--help` and `--print_config` exit 0)."""
    try:
        main(args)
    except SystemExit as done:
        return "" if done.code in (0, None) else str(done.code)
    return ""


def read_runs(args: list[str]) -> set[str]:
    """The runs a command reads, from the `lightning_logs/RUN/...` paths it names."""
    values = [option(args, name) for name in ("--config", "--ckpt_path", "--model.init_from")]
    return {m[1] for v in values if v and (m := RUN_PATH.match(v))}


@pytest.mark.slow  # ~20 commands, 6 of them tiny fits: ~15 s on one core
def test_the_readme_run_top_to_bottom_reads_the_runs_it_names(fresh_clone, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    commands = readme_commands(text)
    assert not re.search(r"version_\d", "\n".join(map(" ".join, commands)))  # every command names its run
    made: dict[str, list[str]] = {}  # run -> the README command that trained it
    skipped, ran = [], []
    with JudgeServer(slow_seconds=2) as server:
        for args in commands:
            if int(option(args, "--trainer.devices") or 1) > 1:
                skipped.append(" ".join(args))  # several processes: tests/test_ddp.py runs that path
                continue
            for name in read_runs(args):
                assert name in made, f"{' '.join(args)}: reads run {name}, which no earlier README command trains"
            if args[0] == "fit" and "--model.init_from" in args:  # the fine-tune starts from the real-data demo
                init_from = option(args, "--model.init_from")
                trained_on = torch.load(init_from, weights_only=True)["datamodule_hyper_parameters"]["dataset"]
                assert trained_on != "synthetic", init_from
                config = yaml.safe_load((ROOT / "configs/instruct-demo.yaml").read_text())
                assert config["model"]["init_from"] == init_from  # the config names the same run
            name = option(args, "--run") if args[0] == "fit" else None
            steps_before = resumed_steps(args)
            error = run(localized(args, fresh_clone, server.url))
            if name in made and "--ckpt_path" not in args:  # a second way to train the same run: refused
                assert f"--run {name}:" in error and "holds a run already" in error, error
                continue
            assert error == "", f"{' '.join(args)}\n{error}"
            ran.append(args)
            if name:
                made[name] = args
                saved = yaml.safe_load((Path("lightning_logs") / name / "config.yaml").read_text())
                assert saved["run"] == name
            if steps_before is not None:  # a resume goes on in the run's own folder
                assert resumed_steps(args) > steps_before
    assert sorted(p.name for p in Path("lightning_logs").iterdir()) == sorted(made)  # no version_N folder
    assert {"demo", "demo-synthetic", "instruct-demo"} <= set(made)
    assert (Path("my-model") / "model.safetensors").is_file() and FakeHfApi.commits
    assert FakeHfApi.commits[0][0] == "me/tinystories-demo" and "model.safetensors" in FakeHfApi.commits[0][1]
    assert [s for s in skipped if "--trainer.devices" not in s] == []
    verbs = {args[0] for args in ran}
    assert {"fit", "validate", "generate", "export", "evaluate"} <= verbs, verbs


def resumed_steps(args: list[str]):
    """The step of the last.ckpt a `fit --config lightning_logs/RUN/config.yaml --ckpt_path last` resumes."""
    if args[0] != "fit" or option(args, "--ckpt_path") != "last":
        return None
    (name,) = read_runs(args)
    return torch.load(Path("lightning_logs") / name / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_readme_commands_are_found():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    fits = [args for args in commands
            if args[0] == "fit" and not {"--ckpt_path", "--help", "--print_config"} & set(args)]
    assert fits and all("--run" in args for args in fits), [a for a in fits if "--run" not in a]
    assert any(args[:2] == ["export", "--ckpt_path"] and "--push_to_hub" in args for args in commands)
