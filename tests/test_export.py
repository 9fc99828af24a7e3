"""`export`: a checkpoint becomes a Hugging Face folder that loads offline with the same logits; hub upload paths."""

import json
import os
import subprocess
import sys

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.conftest import ROOT
from tinystories.__main__ import main as run_verb
from tinystories.cli import cli_main
from tinystories.export import model_card
from tinystories.checkpoint import load, model_of, tokenizer_of
from tinystories.model import TinyStoriesLM
from tinystories.tokenizer import load_tokenizer

TEXT = ["Once upon a time, there was a little girl named Lily.", "Tom"]


@pytest.fixture(scope="module")
def ckpt(trained_ckpt):
    return trained_ckpt


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "tiny-stories"
    out.mkdir()  # an existing empty folder is fine
    run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out), "--max_new_tokens", "300"])
    return out


def lightning_logits(ckpt, tokenizer) -> tuple[torch.Tensor, dict]:
    module = TinyStoriesLM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    batch = tokenizer(TEXT, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return module(batch["input_ids"], batch["attention_mask"]), batch


def test_checkpoint_carries_its_tokenizer_and_validation_metrics(ckpt, tiny_tokenizer_dir):
    checkpoint = torch.load(ckpt, weights_only=True)
    assert set(checkpoint["TinyStoriesData"]["tokenizer_files"]) == {"tokenizer.json", "tokenizer_config.json"}
    rebuilt, original = tokenizer_of(checkpoint, ckpt), load_tokenizer(str(tiny_tokenizer_dir))
    assert rebuilt(TEXT)["input_ids"] == original(TEXT)["input_ids"] and rebuilt.padding_side == "left"
    assert rebuilt.pad_token_id == original.pad_token_id and rebuilt.eos_token_id == original.eos_token_id
    metrics = checkpoint["val_metrics"]
    assert set(metrics) == {"val/loss", "val/ppl", "val/bpb"}
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert metrics["val/loss"] == pytest.approx(float(state["current_score"]))
    assert checkpoint["train_shape"] == {"world_size": 1, "accumulate_grad_batches": 1}


def test_export_loads_offline_with_the_lightning_modules_logits(ckpt, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
            "tokenizer_config.json"} <= names
    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    expected, batch = lightning_logits(ckpt, tokenizer)
    with torch.no_grad():
        logits = model(**batch).logits
    real = batch["attention_mask"].bool()  # a pad's logits are never used: the project lets its row attend to itself
    assert not real.all()
    torch.testing.assert_close(logits[real], expected[real])
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == model.config.pad_token_id == 0

    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id and generation["pad_token_id"] == 0
    assert (generation["do_sample"], generation["temperature"], generation["top_k"], generation["top_p"],
            generation["max_new_tokens"]) == (True, 0.8, 40, 0.95, 300)


def test_model_card_states_what_the_checkpoint_records(ckpt, exported):
    card = (exported / "README.md").read_text()
    checkpoint = torch.load(ckpt, weights_only=True)
    parameters = TinyStoriesLM.load_from_checkpoint(ckpt, weights_only=True).num_parameters()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert f"A {parameters:,}-parameter LLaMA" in card and "| layers | 2 |" in card and "| hidden size | 32 |" in card
    assert "Stories from `synthetic`: trained on split `train`, validated on `validation`" in card
    # 120 steps x batch 8 x 1 device x 1 accumulation = 960 samples of at most 128 tokens.
    assert "120 optimizer steps of 8 samples" in card and "960 samples" in card and "at most 122,880 tokens" in card
    for name, value in checkpoint["val_metrics"].items():
        assert f"{value:.4f}" in card, name
    assert "bits per UTF-8 byte" in card and 'AutoModelForCausalLM.from_pretrained("tiny-stories")' in card


def test_pipeline_writes_a_story(exported):
    generator = pipeline("text-generation", model=str(exported), device="cpu")
    story = generator("Once upon a time", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert story.startswith("Once upon a time") and len(story) > len("Once upon a time") + 5


def test_model_card_states_the_schedule_and_weight_decay_that_trained(ckpt, tiny_tokenizer_dir):
    checkpoint = torch.load(ckpt, weights_only=True)
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    card = model_card(checkpoint, model_of(checkpoint), tokenizer, "tiny")
    assert "warmup steps then cosine decay to zero, weight decay 0.0." in card  # the tiny run: AdamW, cosine
    checkpoint["hyper_parameters"]["optimization"].update(optimizer="muon", lr_schedule="wsd", decay_fraction=0.4,
                                                          warmup_steps=50, weight_decay=0.0,
                                                          muon_weight_decay=0.2)  # configs/demo.yaml
    card = model_card(checkpoint, model_of(checkpoint), tokenizer, "demo")
    assert ("50 warmup steps, constant, then linear decay to zero over the last 40% of the run, weight decay 0.2 on "
            "the hidden matrices and 0.0 on the rest.") in card

def test_a_checkpoint_of_another_project_is_one_line(ckpt, tmp_path):
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"] = {"hidden_size": 32}  # a Lightning checkpoint, but not of this model
    foreign = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, foreign)
    with pytest.raises(SystemExit, match=r"^error: --ckpt_path .*foreign.ckpt: not written by `python -m tinystories "
                                         r"fit` \(no model.architecture"):
        run_verb(["export", "--ckpt_path", str(foreign), "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_out_dir_without_touching_it(ckpt, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in out.iterdir()}
    with pytest.raises(SystemExit, match="--out_dir .*taken exists and is not an empty folder"):
        run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out)])
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left beside it
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        run_verb(["export", "--ckpt_path", str(tmp_path / "none.ckpt"), "--out_dir", str(tmp_path / "new")])


@pytest.mark.slow  # a fresh interpreter with its own HF_HOME: ~5 s
def test_push_to_hub_without_a_token_fails_clearly_before_writing(ckpt, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC"))}
    # Online mode so the token check is what stops it; an unroutable endpoint in case anything tried to connect.
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-m", "tinystories", "export", "--ckpt_path", str(ckpt), "--out_dir",
                           str(tmp_path / "out"), "--push_to_hub", "someone/tiny-stories"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (nothing was written)")
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_mode_fails_clearly(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE is set"):
        run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--push_to_hub", "a/b"])
    assert not (tmp_path / "out").exists()


class FakeHfApi:
    calls: list = []
    fail: bool = False

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise ConnectionError("Failed to resolve huggingface.co\nmore detail")
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: op.path_or_fileobj for op in operations}
        self.calls.append(("create_commit", repo_id, files, kwargs))


def fake_hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(ckpt, tmp_path, monkeypatch, capsys):
    fake_hub(monkeypatch)
    run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--push_to_hub", "me/tiny",
              "--private", "true"])
    assert FakeHfApi.calls[0] == ("init", "hf_fake")
    assert FakeHfApi.calls[1] == ("create_repo", "me/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    _, repo_id, files, _ = FakeHfApi.calls[2]
    assert repo_id == "me/tiny" and files["model.safetensors"] == str(tmp_path / "out" / "model.safetensors")
    assert set(files) == {p.name for p in (tmp_path / "out").iterdir()}
    assert 'from_pretrained("me/tiny")' in (tmp_path / "out" / "README.md").read_text()
    assert "Uploaded to https://huggingface.co/me/tiny" in capsys.readouterr().out

    FakeHfApi.fail = True
    try:
        with pytest.raises(SystemExit, match=r"^error: --push_to_hub me/tiny: upload failed \(ConnectionError: "
                                             r"Failed to resolve huggingface.co\); the export is in .*out2$"):
            run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out2"), "--push_to_hub",
                      "me/tiny"])
    finally:
        FakeHfApi.fail = False
    assert (tmp_path / "out2" / "model.safetensors").is_file()  # the export stays for a later upload


def test_an_exported_folder_is_pushed_as_it_is_with_its_card_named_for_the_hub(exported, tmp_path, monkeypatch,
                                                                              capsys):
    fake_hub(monkeypatch)
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    run_verb(["export", "--ckpt_path", str(exported), "--push_to_hub", "me/tinystories-demo"])
    _, repo_id, files, _ = FakeHfApi.calls[2]
    assert repo_id == "me/tinystories-demo" and set(files) == set(before)
    assert files["model.safetensors"] == str(exported / "model.safetensors")  # the files themselves, uploaded
    card = files["README.md"].decode()
    assert "\n# me/tinystories-demo\n" in card and 'from_pretrained("me/tinystories-demo")' in card
    assert "hf download me/tinystories-demo --local-dir tiny-stories" in card and "tiny-stories" not in card.replace(
        "--local-dir tiny-stories", "").replace("--ckpt_path tiny-stories", "")
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before  # the folder on disk is unchanged
    assert f"Uploaded {exported} to https://huggingface.co/me/tinystories-demo" in capsys.readouterr().out
    for extra, expected in [
        ([], "an exported folder already; give --gguf to add a GGUF file, --push_to_hub USER/NAME to upload"),
        (["--push_to_hub", "me/x", "--out_dir", str(tmp_path / "copy")], "leave out --out_dir"),
    ]:
        with pytest.raises(SystemExit, match=expected):
            run_verb(["export", "--ckpt_path", str(exported), *extra])
    (tmp_path / "notes").mkdir()
    with pytest.raises(SystemExit, match=r"notes: no config.json or model.safetensors; give a folder written by"):
        run_verb(["export", "--ckpt_path", str(tmp_path / "notes"), "--push_to_hub", "me/x"])
    assert not (tmp_path / "copy").exists() and len(FakeHfApi.calls) == 3


def test_export_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_verb(["export", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, words in [("--ckpt_path", "Lightning checkpoint"), ("--out_dir", "nothing is overwritten"),
                          ("--push_to_hub", "hub repository id"), ("--private", "private"),
                          ("--max_new_tokens", "generation_config.json")]:
        assert option in text and words in text, option
