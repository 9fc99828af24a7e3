"""End-to-end `fit` runs of a tiny model on the synthetic corpus: logs, checkpoints, resume, learning.

DDP runs are in test_ddp.py.
"""

import errno

import pytest
import torch
from lightning.pytorch.callbacks import Timer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import fit_args
from tinystories import checkpoint as checkpoint_module
from tinystories.__main__ import main
from tinystories.callbacks import flops_per_token
from tinystories.checkpoint import AtomicCheckpointIO
from tinystories.cli import cli_main
from tinystories.model import TinyStoriesLM


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_fit_writes_tensorboard_config_and_checkpoints(tmp_path, tiny_tokenizer_dir):
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "7", "--trainer.val_check_interval", "3",
                      "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "1"))
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "config.yaml").is_file()
    logged = scalars(run)
    assert {"train/loss", "val/loss", "val/ppl", "val/bpb", "lr"} <= set(logged)
    assert "hp_metric" not in logged  # Lightning's placeholder (-1) for the hparams tab
    # Every 3 steps and after the last one (TensorBoard steps count from 0).
    assert [step for step, _ in logged["val/loss"]] == [2, 5, 6]
    val_loss, val_ppl = logged["val/loss"][-1][1], logged["val/ppl"][-1][1]
    assert val_ppl == pytest.approx(torch.exp(torch.tensor(val_loss)).item(), rel=1e-4)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 3  # 2 best by val/loss + last
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7

    model = TinyStoriesLM.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.architecture.vocab_size == 512 and model.architecture.hidden_size == 32  # linked from the tokenizer


@pytest.mark.slow
def test_resume_continues_at_saved_step_and_lr(tmp_path, tiny_tokenizer_dir, monkeypatch):
    seen = []
    original = TinyStoriesLM.training_step

    def crash_at_step_6(self, batch, batch_idx):
        seen.append((self.trainer.global_step, self.trainer.optimizers[0].param_groups[0]["lr"]))
        if self.trainer.global_step == 6:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TinyStoriesLM, "training_step", crash_at_step_6)
    args = ("--trainer.max_steps", "10", "--trainer.val_check_interval", "4", "--trainer.check_val_every_n_epoch",
            "null", "--model.optimization.warmup_steps", "2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli_main(fit_args(tmp_path, tiny_tokenizer_dir, *args))
    lr_at = dict(seen)
    checkpoint = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4

    seen.clear()
    monkeypatch.setattr(TinyStoriesLM, "training_step", lambda self, b, i: (
        seen.append((self.trainer.global_step, self.trainer.optimizers[0].param_groups[0]["lr"])),
        original(self, b, i))[1])
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", "lightning_logs/version_0/config.yaml", "--ckpt_path", "last"])
    assert [step for step, _ in seen] == list(range(4, 10))
    assert seen[0][1] == lr_at[4] == checkpoint["lr_schedulers"][0]["_last_lr"][0]
    assert (tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt").is_file()  # the old run's files stay
    assert (tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("by_time", [True, False])
def test_max_time_stops_a_run_annealed_with_schedule_by_max_time(tmp_path, tiny_tokenizer_dir, monkeypatch, by_time):
    # A machine at 6 s a step against a 60 s max_time and 20 steps: the time limit stops the run at step 10.
    trainers = []
    monkeypatch.setattr(Timer, "on_fit_start", lambda self, trainer, *a, **k: trainers.append(trainer))
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 6.0 * trainers[0].global_step if trainers else 0.0)
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "20", "--trainer.max_time",
                      "00:00:01:00", "--trainer.val_check_interval", "20", "--trainer.check_val_every_n_epoch",
                      "null", "--model.optimization.lr_schedule", "wsd", "--model.optimization.decay_fraction", "0.5",
                      "--model.optimization.schedule_by_max_time", str(by_time).lower()))
    checkpoint = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10
    # The rate after step 10 follows the clock read at step 9's start: 54 of 60 s is 18 of 20 steps, 80% through
    # the decay (steps 10-19). On steps alone, step 10 is where the decay begins.
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(3e-3 * (0.2 if by_time else 1.0))


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(tmp_path, tiny_tokenizer_dir, capsys):
    with pytest.raises(SystemExit, match="^error: --ckpt_path last: no last.ckpt"):
        main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "1", "--ckpt_path", "last"))


@pytest.mark.slow
def test_loss_falls_far_below_its_start_on_synthetic_stories(tmp_path, tiny_tokenizer_dir):
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "150", "--trainer.val_check_interval",
                      "150", "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "1",
                      "--model.optimization.warmup_steps", "10", "--model.optimization.learning_rate", "1e-2"))
    logged = scalars(tmp_path / "lightning_logs" / "version_0")
    first_loss, final_val = logged["train/loss"][0][1], logged["val/loss"][-1][1]
    assert first_loss > 6.0  # about ln(512) or more at Kaiming init
    assert final_val < 0.55 * first_loss, (first_loss, final_val)


@pytest.mark.slow
def test_muon_run_logs_both_learning_rates_and_resumes(tmp_path, tiny_tokenizer_dir, monkeypatch):
    args = ("--model.optimization.optimizer", "muon", "--model.optimization.muon_learning_rate", "5e-3",
            "--trainer.max_steps", "4",
            "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "null",
            "--trainer.log_every_n_steps", "1")
    cli_main(fit_args(tmp_path, tiny_tokenizer_dir, *args))
    run = tmp_path / "lightning_logs" / "version_0"
    assert {"lr/muon", "lr/adamw"} <= set(scalars(run))
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # momentum buffers saved

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps", "6"])
    assert cli.trainer.global_step == 6
    muon_lr = scalars(tmp_path / "lightning_logs" / "version_1")["lr/muon"]
    assert muon_lr[0][0] == 4 and muon_lr[0][1] < 5e-3


@pytest.mark.slow
def test_throughput_and_mfu_are_logged(tmp_path, tiny_tokenizer_dir):
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "6", "--trainer.log_every_n_steps",
                            "2", "--trainer.val_check_interval", "3", "--trainer.check_val_every_n_epoch", "null",
                            "--throughput.peak_flops", "1e12"))
    logged = scalars(tmp_path / "lightning_logs" / "version_0")
    tokens, samples, mfu = (logged[f"throughput/{k}"] for k in ("tokens_per_sec", "samples_per_sec", "mfu"))
    assert [step for step, _ in tokens] == [2, 4, 6]
    for (_, t), (_, s), (_, m) in zip(tokens, samples, mfu):
        assert 0 < s < t  # a story is several tokens
        assert m == pytest.approx(t * flops_per_token(cli.model, 128) / 1e12, rel=0.5)


@pytest.mark.slow
def test_full_disk_while_saving_leaves_the_previous_checkpoint(tmp_path, tiny_tokenizer_dir, monkeypatch, capsys):
    args = fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                    "--trainer.check_val_every_n_epoch", "null")
    cli = cli_main(args)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(SystemExit, match="no space left on device.*resume with --ckpt_path last"):
        main(["fit", "--config", str(last.parents[1] / "config.yaml"), "--ckpt_path", str(last),
              "--trainer.max_steps", "6", "--checkpoint.dirpath", str(last.parent)])  # the same last.ckpt
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] == 4
    leftovers = [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_tokenizer_dir, monkeypatch):
    original = TinyStoriesLM.training_step

    def nan_from_step_3(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step >= 3 else loss

    monkeypatch.setattr(TinyStoriesLM, "training_step", nan_from_step_3)
    args = fit_args(tmp_path, tiny_tokenizer_dir, "--trainer.max_steps", "8", "--trainer.val_check_interval", "2",
                    "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "50")
    # The step that started at global_step 3 is the 4th; checkpoints count steps the same way (step=2: 2 done).
    with pytest.raises(SystemExit, match="NaN or infinite at step 4; stopped before saving") as exit_:
        main(args)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert str(last) in str(exit_.value.code)
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values() if w.is_floating_point())
