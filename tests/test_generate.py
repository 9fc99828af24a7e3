"""`generate`: batched left-padded generation equals one prompt at a time, seeds repeat, EOS stops, the verb's I/O."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, SAMPLE_PROMPTS
from tinystories.__main__ import append_repeats
from tinystories.__main__ import main as run_verb
from tinystories.cli import cli_main
from tinystories.checkpoint import load
from tinystories.generate import sample_stories
from tinystories.measures import repetition

PROMPTS = ["Once upon a time", "Lily", "One day, a little boy named Tom went to the park with his mom"]


@pytest.fixture(scope="module")
def ckpt(trained_ckpt):
    return trained_ckpt


@pytest.fixture(scope="module")
def loaded(ckpt):
    loaded = load(ckpt, "cpu")
    return loaded.model, loaded.tokenizer


def test_training_logs_sample_stories_at_each_validation(trained_run, loaded):
    events = EventAccumulator(str(trained_run), size_guidance={"tensors": 0})
    events.Reload()
    logged = events.Tensors("samples/text_summary")
    assert [e.step for e in logged] == [60, 120]
    latest = logged[-1].tensor_proto.string_val[0].decode().split("\n\n---\n\n")
    assert len(latest) == 2 and all(s.startswith(p) for s, p in zip(latest, SAMPLE_PROMPTS))
    # The callback's stories are those of `sample_stories` with its seed, from the final model.
    model, tokenizer = loaded
    again = sample_stories(model, tokenizer, SAMPLE_PROMPTS, seed=0, max_new_tokens=20)
    assert [s["prompt"] + s["completion"] for s in again] == latest
    # ... and their judge-free measures are logged beside them.
    eos_rate, repeats = events.Scalars("samples/eos_rate"), events.Scalars("samples/repetition")
    assert [e.step for e in eos_rate] == [e.step for e in repeats] == [60, 120]
    assert eos_rate[-1].value == pytest.approx(sum(s["eos"] for s in again) / 2)
    assert repeats[-1].value == pytest.approx(sum(repetition(s["completion"]) for s in again) / 2)


def test_batch_of_left_padded_prompts_gives_the_same_greedy_stories_as_one_at_a_time(loaded):
    model, tokenizer = loaded
    batch = tokenizer(PROMPTS, padding=True, add_special_tokens=False)
    assert len({sum(mask) for mask in batch["attention_mask"]}) == 3 and batch["attention_mask"][1][0] == 0
    together = sample_stories(model, tokenizer, PROMPTS, do_sample=False, max_new_tokens=40, batch_size=3)
    alone = [sample_stories(model, tokenizer, [p], do_sample=False, max_new_tokens=40)[0] for p in PROMPTS]
    assert together == alone
    assert [s["prompt"] for s in together] == PROMPTS
    assert all(s["new_tokens"] > 5 for s in together)


def test_sampling_with_a_seed_repeats_and_leaves_the_callers_random_state_alone(loaded):
    model, tokenizer = loaded
    state = torch.random.get_rng_state()
    first = sample_stories(model, tokenizer, PROMPTS, seed=7, max_new_tokens=40, num_return_sequences=2, batch_size=2)
    again = sample_stories(model, tokenizer, PROMPTS, seed=7, max_new_tokens=40, num_return_sequences=2, batch_size=2)
    other = sample_stories(model, tokenizer, PROMPTS, seed=8, max_new_tokens=40, num_return_sequences=2, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == again and first != other
    assert [s["prompt"] for s in first] == [p for p in PROMPTS for _ in range(2)]
    assert first[0]["completion"] != first[1]["completion"]  # two samples of one prompt differ
    # A story shorter than max_new_tokens ended at EOS, and nothing after the EOS was kept.
    assert all(s["eos"] for s in first if s["new_tokens"] < 40)


def test_generation_stops_at_eos(loaded):
    model, tokenizer = loaded
    calls = []

    def eos_from_third_token(module, inputs, logits):
        calls.append(1)
        if len(calls) >= 3:
            logits = logits.clone()
            logits[..., tokenizer.eos_token_id] += 1e4
        return logits

    hook = model.lm_head.register_forward_hook(eos_from_third_token)
    try:
        stories = sample_stories(model, tokenizer, PROMPTS, do_sample=False, max_new_tokens=50, batch_size=3)
    finally:
        hook.remove()
    assert len(calls) == 3  # one forward per token: generation stopped at EOS, not at max_new_tokens
    for story in stories:
        assert story["eos"] and story["new_tokens"] == 3
        assert len(tokenizer(story["completion"], add_special_tokens=False)["input_ids"]) <= 2


def test_verb_from_checkpoint_and_export_writes_stories_and_jsonl(ckpt, tmp_path, capsys):
    exported = tmp_path / "exported"
    run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(exported)])
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("Lily\n\nOne day, a little boy named Tom went to the park with his mom\n")
    outputs = {}
    for source in (ckpt, exported):
        out = tmp_path / f"{source.name}.jsonl"
        run_verb(["generate", "--ckpt_path", str(source), "--prompt", PROMPTS[0], "--prompts_file", str(prompts_file),
                  "--do_sample", "false", "--max_new_tokens", "30", "--batch_size", "2", "--device", "cpu",
                  "--output", str(out)])
        outputs[source] = [json.loads(line) for line in out.read_text().splitlines()]
    from_ckpt, from_export = outputs[ckpt], outputs[exported]
    assert [row["prompt"] for row in from_ckpt] == PROMPTS
    assert [row["completion"] for row in from_ckpt] == [row["completion"] for row in from_export]
    settings = from_ckpt[0]["settings"]
    assert settings["max_new_tokens"] == 30 and settings["do_sample"] is False and settings["ckpt_path"] == str(ckpt)
    assert settings["temperature"] is settings["top_k"] is settings["top_p"] is settings["seed"] is None  # greedy
    printed = capsys.readouterr().out
    assert PROMPTS[0] + from_ckpt[0]["completion"] in printed and "Wrote 3 stories" in printed


def test_repeated_prompt_options_are_all_kept(ckpt, tmp_path):
    assert append_repeats(["generate", "--prompt", "a", "--prompt=b", "--prompt", "c d", "--seed", "1"]) == [
        "generate", "--prompt", "a", "--prompt+=b", "--prompt+=c d", "--seed", "1"]
    out = tmp_path / "s.jsonl"
    run_verb(["generate", "--ckpt_path", str(ckpt), "--prompt", "Tom", "--prompt", "Lily", "--max_new_tokens", "5",
              "--seed", "3", "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["Tom", "Lily"]
    assert {k: rows[0]["settings"][k] for k in ("seed", "temperature", "top_k", "top_p")} == {
        "seed": 3, "temperature": 0.8, "top_k": 40, "top_p": 0.95}


def test_bad_input_is_a_one_line_error(ckpt, tmp_path):
    with pytest.raises(SystemExit, match="no prompts"):
        run_verb(["generate", "--ckpt_path", str(ckpt)])
    with pytest.raises(SystemExit, match=f"--ckpt_path {tmp_path / 'nope.ckpt'}: no such file"):
        run_verb(["generate", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--prompt", "Tom"])
    with pytest.raises(SystemExit, match="--prompts_file .*: no such file"):
        run_verb(["generate", "--ckpt_path", str(ckpt), "--prompts_file", str(tmp_path / "none.txt")])
    with pytest.raises(SystemExit, match="--num_return_sequences > 1 needs --do_sample true"):
        run_verb(["generate", "--ckpt_path", str(ckpt), "--prompt", "Tom", "--do_sample", "false",
                  "--num_return_sequences", "2"])
    (tmp_path / "taken.jsonl").write_text("keep")
    with pytest.raises(SystemExit, match="already exists"):
        run_verb(["generate", "--ckpt_path", str(ckpt), "--prompt", "Tom", "--output", str(tmp_path / "taken.jsonl")])
    assert (tmp_path / "taken.jsonl").read_text() == "keep"


@pytest.mark.slow  # a fresh interpreter: ~5 s
def test_help_lists_every_option_with_its_description():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tinystories", "generate", "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.split())  # help wraps lines at the terminal width
    for option, words in [("--ckpt_path", "Lightning checkpoint"), ("--prompt", "repeat the option"),
                          ("--prompts_file", "one per line"), ("--max_new_tokens", "ends earlier at EOS"),
                          ("--do_sample", "greedy"), ("--temperature", "Sampling temperature"),
                          ("--top_k", "k likeliest"), ("--top_p", "nucleus"), ("--num_return_sequences", "per prompt"),
                          ("--seed", "Random seed"), ("--batch_size", "left-padded"), ("--device", "CUDA"),
                          ("--output", "jsonl")]:
        assert option in text and words in text, option


def test_sampling_options_out_of_range_are_one_line(tmp_path):
    for extra, expected in [(["--temperature", "0"], "--temperature 0.0: must be above 0"),
                            (["--temperature", "-1"], "--temperature -1.0: must be above 0"),
                            (["--top_k", "-1"], "--top_k -1: must be 0 (off) or more"),
                            (["--top_p", "1.5"], "--top_p 1.5: must be above 0 and at most 1"),
                            (["--top_p", "0"], "--top_p 0.0: must be above 0 and at most 1")]:
        with pytest.raises(SystemExit, match=f"^error: {re.escape(expected)}"):  # before any checkpoint is read
            run_verb(["generate", "--ckpt_path", str(tmp_path / "none.ckpt"), "--prompt", "Tom", *extra])
