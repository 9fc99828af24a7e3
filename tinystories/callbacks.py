"""Callbacks the CLI adds by default: sample stories, throughput, a stop on a NaN loss, `last.ckpt` every N steps, a
validation after the last step, freed memory kept for reuse while training on a CPU, and a progress bar that counts
steps. Each can be turned off with `disable_callbacks: [name, ...]` in the YAML (`tinystories/cli.py`).

At each validation, rank zero continues a few fixed prompts and logs them to TensorBoard as text (tab "TEXT");
when `fit` ends they are printed with the final validation metrics (`samples:` in the YAML). Their EOS rate and
repetition (`tinystories/measures.py`) are logged as `samples/eos_rate` and `samples/repetition`. Tokens and samples
per second, and MFU where the peak FLOP/s is known, are logged under `throughput/` (`throughput:` in the YAML).
"""

import ctypes
import ctypes.util
import functools
import platform
import sys
import time
from pathlib import Path
from time import monotonic
from typing import Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from tinystories import gpu
from tinystories.errors import LossDiverged, UserError
from tinystories.generate import sample_stories
from tinystories.measures import repetition

DEFAULT_PROMPTS = ("Once upon a time", "Lily and her dog", "One day, a little boy named Tom")


class SampleStories(Callback):
    def __init__(self, prompts: list[str] = list(DEFAULT_PROMPTS), max_new_tokens: int = 120,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int = 0):
        """Sample stories from fixed prompts at each validation.

        Args:
            prompts: Story beginnings continued at each validation; empty to turn sampling off.
            max_new_tokens: Most tokens generated per prompt.
            temperature: Sampling temperature.
            top_k: Sample among the k likeliest tokens.
            top_p: Sample within this nucleus probability mass.
            seed: Seed for sampling, so samples at different steps differ only because the model did.
        """
        self.prompts = list(prompts)
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.seed = seed
        self.latest: list[str] = []

    def sample(self, pl_module: LightningModule, tokenizer) -> list[dict]:
        with pl_module.eager():
            return sample_stories(pl_module.model, tokenizer, self.prompts, seed=self.seed,
                                  batch_size=len(self.prompts), **self.settings)

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.prompts or trainer.sanity_checking or trainer.datamodule is None:
            return
        stories = self.sample(pl_module, trainer.datamodule.tokenizer)
        self.latest = [story["prompt"] + story["completion"] for story in stories]
        # The judge-free measures of `evaluate`, so the curves show when stories stop looping and start ending.
        metrics = {"samples/eos_rate": sum(s["eos"] for s in stories) / len(stories),
                   "samples/repetition": sum(repetition(s["completion"]) for s in stories) / len(stories)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            text = "\n\n---\n\n".join(self.latest)
            experiment.add_text("samples", text, global_step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            print(f"\nFinal validation (step {trainer.global_step}): {shown}")
        if self.latest:
            print("\nSample stories:")
            for story in self.latest:
                print(f"\n{story}\n" + "-" * 40)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with the optimizer step beside the loss (`step=120/2000` when `max_steps` is set).

    Lightning turns the logged values into numbers for the bar with `.item()`: on a GPU a host sync, which stalls
    the kernels queued ahead. While training they are read every `trainer.log_every_n_steps` steps, when the loggers
    read them anyway; the bar and its step count move every step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shown: dict = {}

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        if not (trainer.training and self.shown and trainer.global_step % trainer.log_every_n_steps):
            self.shown = super().get_metrics(trainer, pl_module)
        metrics = dict(self.shown)
        metrics["step"] = f"{trainer.global_step}/{trainer.max_steps}" if trainer.max_steps > 0 else trainer.global_step
        return metrics


class ValidateAtEnd(Callback):
    """Validate (and so checkpoint) after the last training step, not only every `val_check_interval` steps.

    Lightning validates when `should_stop` is set after a batch, so the final step's metrics and `last.ckpt`
    exist however `max_steps` or the epoch length line up with the validation interval.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        epoch_loop = trainer.fit_loop.epoch_loop
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
        if last_step or (last_epoch and epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True


class ReuseFreedMemory(Callback):
    """While `fit` trains on the CPU (Linux, glibc), freed memory stays in the process for the next step to reuse.

    glibc's malloc maps every block over 32 MB (the 19.5M model's 32,000 x 256 fp32 embedding and head gradients)
    fresh from the OS and unmaps it when freed, so each step faults in hundreds of MB of new pages. With mmap off and
    no trimming (`mallopt`), blocks come from the heap and go back to it: a few thousand faults a step at most
    (docs/performance.md). The price is that the process keeps its peak memory until `fit` ends; then glibc's
    defaults come back and the heap is trimmed.
    """

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
    DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
    KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}

    def __init__(self):
        self.active = False

    @staticmethod
    @functools.cache
    def libc():
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return None
        return ctypes.CDLL(ctypes.util.find_library("c"))

    def set(self, values: dict[int, int]) -> bool:
        libc = self.libc()
        return libc is not None and all(libc.mallopt(key, value) == 1 for key, value in values.items())

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.strategy.root_device.type == "cpu":
            self.active = self.set(self.KEEP)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active:
            self.set(self.DEFAULTS)
            self.libc().malloc_trim(0)  # hand what the heap kept back to the OS
            self.active = False

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)


class Throughput(Callback):
    """Log real (non-pad) tokens and samples per second, and MFU where the device's peak FLOP/s is known.

    Counts accumulate on the device and are read once per `trainer.log_every_n_steps`, so there is no per-step host
    synchronisation; rates are averages over that window, summed over DDP ranks. FLOPs per token follow the PaLM
    paper's appendix B: 6N + 12LHT (`flops_per_token`). The peak is the card's dense one (`gpu.DENSE_PEAKS`), else
    Lightning's table.
    """

    def __init__(self, peak_flops: Optional[float] = None):
        """Throughput logging.

        Args:
            peak_flops: The device's peak FLOP/s at the training precision, per device; null looks the GPU up: its
                dense peak (H200, H100, A100, L4, A10, T4, RTX 4090, ...), else Lightning's table. MFU is logged
                only when one is known.
        """
        self.peak_flops = peak_flops
        self.tokens: Optional[torch.Tensor] = None
        self.samples = 0
        self.start = self.validation_start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tokens = torch.zeros((), dtype=torch.long, device=pl_module.device)
        self.samples, self.start = 0, time.perf_counter()
        if self.peak_flops is None:
            self.peak_flops = gpu.peak_flops(pl_module.device, trainer.precision)[0]

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.start += time.perf_counter() - self.validation_start  # rates count training time only

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.tokens += batch["attention_mask"].sum()
        self.samples += batch["attention_mask"].shape[0]
        if trainer.global_step % trainer.log_every_n_steps or not trainer.loggers:
            return
        elapsed, self.start = time.perf_counter() - self.start, time.perf_counter()
        counts = torch.tensor([float(self.tokens), float(self.samples)], device=pl_module.device)
        tokens, samples = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.tokens.zero_()
        self.samples = 0
        metrics = {"throughput/tokens_per_sec": tokens / elapsed, "throughput/samples_per_sec": samples / elapsed}
        if self.peak_flops:
            flops = flops_per_token(pl_module, batch["input_ids"].shape[1]) * tokens / elapsed
            metrics["throughput/mfu"] = flops / (self.peak_flops * trainer.world_size)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def flops_per_token(pl_module: LightningModule, context: int) -> float:
    """Training FLOPs per token, forward and backward, as the PaLM paper's appendix B counts them: 6N + 12LHT.

    N: parameters outside the input embedding (a lookup, no matmul; the output head counts). L layers, H the
    attention width (heads x head dimension, the hidden size here), T the context: per layer, Q.K^T and scores.V each
    take 2HT FLOPs per token forward, twice that backward: 12HT. Causal masking is not subtracted, as PaLM does not.
    """
    config = pl_module.model.config
    params = sum(p.numel() for n, p in pl_module.model.named_parameters() if "embed_tokens" not in n)
    width = config.num_attention_heads * config.head_dim
    return 6 * params + 12 * config.num_hidden_layers * width * context


class StopOnNonFiniteLoss(Callback):
    """Stop the run at a NaN or infinite training loss before those weights are validated or saved, or skip the batch.

    `stop` records the first bad step (counted from 1, as checkpoints count steps) on the device, with no per-step
    host synchronisation, and checks it when the loss is logged, before every validation and before any checkpoint
    is written: `last.ckpt` stays the last good one. `skip` decides before each optimizer step whether any rank's
    loss was bad; a bad step's gradients are dropped (`zero_grad(set_to_none=True)`), so the optimizer leaves the
    weights and its state (moments, step count) as they were. Deciding needs one host sync per step; the skip count
    is logged as `train/skipped_batches`. Configured under `nonfinite_loss:` in the YAML.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips_in_a_row: int = 10):
        """What to do on a NaN or infinite training loss.

        Args:
            action: On a NaN or infinite training loss, `stop` the run (the last good checkpoint stays intact), or
                `skip` the batch: no change to weights or optimizer state; the learning-rate schedule and the step
                count move on.
            max_skips_in_a_row: With `skip`, stop anyway after this many bad batches in a row: then the model or
                the data is broken, not one batch.
        """
        if max_skips_in_a_row < 1:
            raise UserError(f"nonfinite_loss.max_skips_in_a_row is {max_skips_in_a_row}; it must be at least 1")
        self.action, self.max_skips_in_a_row = action, max_skips_in_a_row
        self.skipped = self.in_a_row = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=pl_module.device)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if self.action == "skip":
            self.bad |= ~torch.isfinite(loss.detach())  # over accumulated batches until the optimizer step

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.action != "skip":
            return
        # Every rank must agree: DDP has averaged the gradients, so one rank's NaN is in all of them.
        bad = trainer.strategy.reduce(self.bad.float(), reduce_op="max").item() > 0
        self.bad.zero_()
        if not bad:
            self.in_a_row = 0
            return
        optimizer.zero_grad(set_to_none=True)  # torch optimizers leave parameters without a gradient untouched
        self.skipped, self.in_a_row, step = self.skipped + 1, self.in_a_row + 1, trainer.global_step + 1
        if self.in_a_row >= self.max_skips_in_a_row:
            raise LossDiverged(f"the training loss was NaN or infinite for {self.in_a_row} batches in a row (steps "
                               f"{step - self.in_a_row + 1} to {step}, nonfinite_loss.max_skips_in_a_row); the "
                               f"weights are those of step {step - self.in_a_row}. Last checkpoint: "
                               f"{self.last_checkpoint(trainer)}. Check the data, or lower "
                               "model.optimization.learning_rate")
        if trainer.is_global_zero:
            print(f"step {step}: training loss NaN or infinite; batch skipped, weights and optimizer state unchanged "
                  f"({self.skipped} skipped so far)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self.action == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped))
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, trainer.global_step, self.first_bad)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and hasattr(self, "first_bad"):
            self.check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if hasattr(self, "first_bad"):  # any checkpoint, whatever its cadence, is written only from good weights
            self.check(trainer)

    @staticmethod
    def last_checkpoint(trainer: Trainer) -> str:
        # The newest `last.ckpt` of either writer: at validations (`checkpoint`) or every N steps (`last_checkpoint`).
        paths = [p for p in (getattr(c, "last_model_path", "") for c in trainer.checkpoint_callbacks) if p]
        return max(paths, key=lambda p: Path(p).stat().st_mtime if Path(p).exists() else 0.0, default="none yet")

    def check(self, trainer: Trainer) -> None:
        if self.action == "skip":
            return
        step = int(trainer.strategy.reduce(self.first_bad.float(), reduce_op="max"))
        if step >= 0:
            raise LossDiverged(f"the training loss became NaN or infinite at step {step}; stopped before saving. "
                               f"Last good checkpoint: {self.last_checkpoint(trainer)}. Lower "
                               "model.optimization.learning_rate, resume from it, or set nonfinite_loss.action: skip")


class PeriodicCheckpoint(ModelCheckpoint):
    """Write `last.ckpt` every `every_n_train_steps` optimizer steps, or every `every_minutes` of training, validated
    or not, so a crash loses at most that much (`last_checkpoint:` in the YAML).

    The `checkpoint` group keeps the best by `val/loss`, which exists only after a validation; this one keeps no top-k
    and monitors nothing, so a step save never ranks a stale metric. Both write the same `last.ckpt` (neither adds a
    `-v1` suffix), so it is always the newest checkpoint of the run.
    """

    def __init__(self, every_n_train_steps: int = 0, every_minutes: Optional[float] = None,
                 dirpath: Optional[str] = None):
        """
        Args:
            every_n_train_steps: Write `last.ckpt` after every this many optimizer steps; 0 turns it off (then it is
                written only after validations).
            every_minutes: Write `last.ckpt` once this many minutes of training have passed since the last write:
                the same cadence on a GPU and a CPU. Under DDP rank 0's clock decides, read every
                `trainer.log_every_n_steps` steps (no collective at each step).
            dirpath: Folder of `last.ckpt`: linked from `checkpoint.dirpath` by the CLI.
        """
        if every_minutes is not None and every_minutes <= 0:
            raise UserError(f"last_checkpoint.every_minutes is {every_minutes}; it must be positive, or null")
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps, every_n_epochs=0)
        self.every_minutes = every_minutes
        self.written_at: Optional[float] = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.written_at = monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.every_minutes is None or self._should_skip_saving_checkpoint(trainer):
            return
        if trainer.world_size > 1 and trainer.global_step % trainer.log_every_n_steps:
            return
        due = monotonic() - self.written_at >= self.every_minutes * 60
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due)
        if due:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.written_at = monotonic()  # a validation's last.ckpt counts too

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ModelCheckpoint writes last.ckpt here when it has written none, e.g. a run shorter than N steps, after the
        # loops have closed the epoch: resuming from it would start a new epoch. The `checkpoint` group has already
        # written the final last.ckpt at the validation after the last step (ValidateAtEnd).
        pass
