"""Callbacks the tests load by class path (`--trainer.callbacks+=tests.helpers.RecordBatches`), also in DDP ranks."""

import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback

from tinystories.callbacks import SampleStories


class RecordBatches(Callback):
    """Appends each training batch's rank, step, learning rate and samples to `<out_dir>/rank<R>.jsonl`."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = {"rank": trainer.global_rank, "pid": os.getpid(), "step": trainer.global_step,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "samples": batch["input_ids"].tolist()}
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def read_records(out_dir: Path, rank: int = 0) -> list[dict]:
    path = Path(out_dir) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class RecordRanks(Callback):
    """Appends what each DDP rank does to `<out_dir>/events<R>.jsonl`: training batches (step after it, real tokens,
    samples), validation batches (their stories, unpadded), checkpoint writes that reach the checkpoint plugin, and at
    the end how many sample stories `SampleStories` made on that rank."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def record(self, trainer, **row) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"events{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"rank": trainer.global_rank, **row}) + "\n")

    def setup(self, trainer, pl_module, stage):
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recorded_save(checkpoint, path, *args, **kwargs):
            self.record(trainer, event="save_checkpoint", plugin=type(io).__name__, path=str(path))
            return save(checkpoint, path, *args, **kwargs)

        io.save_checkpoint = recorded_save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record(trainer, event="train_batch", step=trainer.global_step,
                    tokens=int(batch["attention_mask"].sum()), samples=len(batch["attention_mask"]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            stories = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
            self.record(trainer, event="val_batch", step=trainer.global_step, stories=stories)

    def on_fit_end(self, trainer, pl_module):
        made = [len(cb.latest) for cb in trainer.callbacks if isinstance(cb, SampleStories)]
        self.record(trainer, event="fit_end", step=trainer.global_step, sample_stories=made)


def read_events(out_dir: Path, rank: int, event: str) -> list[dict]:
    path = Path(out_dir) / f"events{rank}.jsonl"
    return [row for row in map(json.loads, path.read_text().splitlines()) if row["event"] == event]


class PauseAtStep(Callback):
    """In a run not resumed from a checkpoint, writes `<out_dir>/paused<R>` when `step` optimizer steps are done, then
    sleeps, so a test can kill the process at a known step."""

    def __init__(self, out_dir: str, step: int):
        self.out_dir, self.step = Path(out_dir), step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"paused{trainer.global_rank}").touch()
            time.sleep(600)


class RecordStart(Callback):
    """Writes `<out_dir>/start.pt` at the first training batch: the step, the optimizer's state size, the weights."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not (self.out_dir / "start.pt").exists():
            import torch

            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"global_step": trainer.global_step, "optimizer_state": len(trainer.optimizers[0].state),
                        "lr": trainer.optimizers[0].param_groups[0]["lr"],
                        "weights": {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}},
                       self.out_dir / "start.pt")
