"""Callbacks the tests load by class path (`--trainer.callbacks+=tests.helpers.RecordBatches`), also in DDP ranks."""

import json
import os
from pathlib import Path

from lightning.pytorch import Callback


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
