"""Checkpoints written atomically on local disks: a crash or a full disk mid-write leaves the previous file intact.

    Trainer(plugins=[AtomicCheckpointIO()])   # the CLI adds it unless `trainer.plugins` is set

Lightning's own writer stages the file in the system temp folder and moves it into place; when that folder is on
another file system (a node-local /tmp, checkpoints on shared storage) the move is a copy over the old file, and a
crash during it truncates `last.ckpt`. Here the temporary file sits beside the target, is fsynced, then renamed.
"""

import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote storage: fsspec's transaction as before
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
