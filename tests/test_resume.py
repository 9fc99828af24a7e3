"""Exact resume: the sampler's position, length grouping, `last.ckpt` every N steps, and real runs killed with SIGKILL.

The kill tests start `python -m tinystories fit` twice at once, one to finish (the reference) and one that
`tests.helpers.PauseAtStep` holds at a step mid-epoch until the test kills its process group; the killed run is then
resumed with `--ckpt_path last` and must end with the reference's weights, bit for bit, having trained on the same
batches in the same order (`tests.helpers.RecordBatches`).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from tests.conftest import LLAMA_TOKENIZER, ROOT, TINYSTORIES, fit_args, needs_shared
from tests.helpers import read_records
from tinystories.checkpoint import AtomicCheckpointIO
from tinystories.cli import cli_main
from tinystories.data import TinyStoriesData
from tinystories.errors import UserError
from tinystories.sampling import ResumableSampler

STORIES = 88  # batches of 8: 11 per epoch on one process, 6 per rank on two


def test_sampler_shards_like_distributed_sampler_and_resumes_mid_epoch():
    data = range(103)
    for rank in (0, 1):
        sampler, reference = ResumableSampler(data, 4, 2, rank, seed=7), DistributedSampler(data, 2, rank, seed=7)
        sampler.set_epoch(3)
        reference.set_epoch(3)
        order = list(sampler)
        assert order == list(reference) and len(sampler) == 52

        resumed = ResumableSampler(data, 4, 2, rank, seed=0)
        resumed.load_state_dict(sampler.state_dict(batches=5))
        resumed.set_epoch(3)  # Lightning sets the resumed epoch again: the position stays
        assert list(resumed) == order[5 * 4:] and len(resumed) == 52
        resumed.set_epoch(4)
        reference.set_epoch(4)
        assert list(resumed) == list(reference)  # the next epoch starts from its beginning

    at_end = ResumableSampler(data, 4)
    at_end.load_state_dict({**ResumableSampler(data, 4).state_dict(batches=26), "epoch": 3})
    assert at_end.epoch == 4 and len(list(at_end)) == 103  # an epoch saved at its end resumes with the next


def pad_fraction(loader) -> float:
    real = total = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1 - real / total


@needs_shared
def test_group_by_length_cuts_padding_on_real_stories_and_keeps_each_story_once():
    dm = TinyStoriesData(dataset=str(TINYSTORIES), tokenizer=str(LLAMA_TOKENIZER), train_split="train[:1000]",
                         val_split="validation[:8]", max_length=512, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    fractions = {}
    for grouped in (False, True):
        dm.hparams.group_by_length = grouped
        loader = dm.train_dataloader()
        assert sorted(loader.sampler) == list(range(1000))  # every story once per epoch
        fractions[grouped] = pad_fraction(loader)
    shards = [list(ResumableSampler(range(1000), 8, 2, rank, lengths=loader.sampler.lengths)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(1000))  # and once over 2 DDP ranks
    # Measured: 0.40 of the tokens in shuffled batches of 8 are pads, 0.02 when grouped.
    assert fractions[True] < 0.1 < 0.3 < fractions[False], fractions


@pytest.mark.slow
def test_last_ckpt_every_n_steps_between_validations(tmp_path, tiny_tokenizer_dir, monkeypatch):
    saved, save = [], AtomicCheckpointIO.save_checkpoint

    def recorded(self, checkpoint, path, storage_options=None):
        saved.append((os.path.basename(path), checkpoint["global_step"]))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recorded)
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "7", "--trainer.val_check_interval", "5",
                      "--trainer.check_val_every_n_epoch", "null", "--last_checkpoint.every_n_train_steps", "2"))
    last_steps = [step for name, step in saved if name == "last.ckpt"]
    assert sorted(set(last_steps)) == [2, 4, 5, 6, 7]  # every 2 steps, and after validations (5, and the last)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and "last.ckpt" in names  # 2 best by val/loss (steps 5 and 7) + last; no last-v1.ckpt
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 7



@pytest.mark.slow
def test_last_ckpt_every_n_minutes_of_training(tmp_path, tiny_tokenizer_dir, monkeypatch):
    """`last_checkpoint.every_minutes`: the GPU configs' cadence, by the clock (here a fake one: 20 s a step)."""
    import tinystories.callbacks as callbacks

    saved, save = [], AtomicCheckpointIO.save_checkpoint
    clock = {"now": 1000.0}

    def recorded(self, checkpoint, path, storage_options=None):
        saved.append((os.path.basename(path), checkpoint["global_step"]))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recorded)
    monkeypatch.setattr(callbacks, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(callbacks.PeriodicCheckpoint, "on_train_batch_start",
                        lambda self, *args: clock.update(now=clock["now"] + 20), raising=False)
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "10", "--trainer.val_check_interval", "5",
                      "--trainer.check_val_every_n_epoch", "null", "--last_checkpoint.every_minutes", "1"))
    last_steps = sorted({step for name, step in saved if name == "last.ckpt"})
    # a minute after the start (step 3), after the validation at 5 (which restarts the minute), then at 8, and the end
    assert last_steps == [3, 5, 8, 10], saved
    with pytest.raises(UserError, match="last_checkpoint.every_minutes is 0.0; it must be positive"):
        cli_main(fit_args(tmp_path / "bad", tiny_tokenizer_dir, "--last_checkpoint.every_minutes", "0"))


def run_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start(args: list[str], cwd) -> subprocess.Popen:
    # A session of its own: killing its process group also kills the DDP rank it launched.
    return subprocess.Popen([sys.executable, "-m", "tinystories", *args], cwd=cwd, env=run_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_when_paused(proc: subprocess.Popen, flag, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run did not pause:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_resume_and_compare(tmp_path, tokenizer_dir, devices: int, pause_at: int, *extra: str) -> tuple:
    """Run the reference and the killed run at once, resume the killed one; return both final checkpoints and
    the batches each rank trained on, in order, in the reference and in the killed-then-resumed run."""
    TinyStoriesData(dataset="synthetic", synthetic_stories=STORIES, tokenizer=str(tokenizer_dir),
                    max_length=128).prepare_data()  # tokenized once here, not by both runs at once
    common = ("--trainer.max_steps", "16", "--trainer.val_check_interval", "5", "--trainer.check_val_every_n_epoch",
              "null", "--trainer.deterministic", "true", "--data.synthetic_stories", str(STORIES),
              "--last_checkpoint.every_n_train_steps", "3", *extra)
    runs = {}
    for name in ("reference", "killed"):
        root = tmp_path / name
        root.mkdir()
        args = fit_args(root, tokenizer_dir, *common, "--trainer.callbacks+=tests.helpers.RecordBatches",
                        f"--trainer.callbacks.out_dir={root / 'records'}")
        args[args.index("--trainer.devices") + 1] = str(devices)
        if name == "killed":
            args += ["--trainer.callbacks+=tests.helpers.PauseAtStep", f"--trainer.callbacks.out_dir={root}",
                     f"--trainer.callbacks.step={pause_at}"]
        runs[name] = start(args, root)
    killed = tmp_path / "killed"
    try:
        kill_when_paused(runs["killed"], killed / "paused0")
        checkpoint = torch.load(killed / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
        runs["resumed"] = start(["fit", "--config", "lightning_logs/version_0/config.yaml", "--ckpt_path", "last"],
                                killed)
        finish(runs["reference"])
        assert "dataloader is not resumable" not in finish(runs["resumed"])  # Lightning's warning, which the CLI mutes
    finally:
        for proc in runs.values():  # a failed test leaves no training processes behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    final = [torch.load(tmp_path / name / f"lightning_logs/{version}/checkpoints/last.ckpt", weights_only=True)
             for name, version in (("reference", "version_0"), ("killed", "version_1"))]
    batches = []
    for rank in range(devices):
        reference = read_records(tmp_path / "reference" / "records", rank)
        rows = read_records(killed / "records", rank)
        first_pid = rows[0]["pid"]
        # The killed run's batches up to its checkpoint, then everything the resumed run trained on.
        kept = [r for r in rows if r["pid"] != first_pid or r["step"] < checkpoint["global_step"]]
        batches.append(([(r["step"], r["samples"]) for r in reference], [(r["step"], r["samples"]) for r in kept]))
    return checkpoint, final, batches


def assert_same_training(checkpoint, final, batches, batches_per_epoch: int) -> None:
    position = checkpoint["TinyStoriesData"]["sampler"]
    assert position["epoch"] == 0 and 0 < position["samples"] < STORIES, "the kill should land mid-epoch"
    reference, resumed = final
    assert reference["global_step"] == resumed["global_step"] == 16
    for name, weight in reference["state_dict"].items():
        assert torch.equal(weight, resumed["state_dict"][name]), name
    for reference_batches, resumed_batches in batches:
        assert resumed_batches == reference_batches  # no batch repeated, none skipped, same order
        seen = Counter(tuple(s) for _, samples in reference_batches[:batches_per_epoch] for s in samples)
        assert max(seen.values()) == 1  # the first epoch repeats no story within a rank


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path, tiny_tokenizer_dir):
    # 11 batches an epoch, 2 per step, a loader worker: killed after 4 steps (8 batches) with last.ckpt at step 3
    # (every 3 steps, 6 batches), so step 4 is trained again; the resumed run crosses the ends of epochs 0 and 1.
    checkpoint, final, batches = kill_resume_and_compare(tmp_path, tiny_tokenizer_dir, 1, 4,
                                                         "--trainer.accumulate_grad_batches", "2",
                                                         "--data.num_workers", "1")
    assert checkpoint["global_step"] == 3 and checkpoint["TinyStoriesData"]["sampler"]["samples"] == 6 * 8
    assert len(batches[0][0]) == 11 + 11 + 8  # 16 steps: 6 + 6 + 4
    assert_same_training(checkpoint, final, batches, batches_per_epoch=11)


@pytest.mark.slow
def test_ddp_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path, tiny_tokenizer_dir):
    # 2 ranks x 8 stories a step: 6 steps an epoch. Killed after 4 steps, resumed from step 3, crossing epoch 0's end.
    checkpoint, final, batches = kill_resume_and_compare(tmp_path, tiny_tokenizer_dir, 2, 4,
                                                         "--trainer.strategy", "ddp")
    assert checkpoint["global_step"] == 3 and len(batches[0][0]) == len(batches[1][0]) == 16
    assert_same_training(checkpoint, final, batches, batches_per_epoch=6)
