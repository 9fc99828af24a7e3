"""Files the project writes through a temporary file get the permissions the umask gives any new file (the
evaluation's run.json, summary.json and report.html: tests/test_evaluate.py)."""

import os

import torch

from tinystories import atomic
from tinystories.checkpoint import AtomicCheckpointIO
from tinystories.judge import write_json


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_respect_the_umask(tmp_path, monkeypatch):
    for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        monkeypatch.setattr(atomic, "UMASK", umask)
        folder = tmp_path / f"umask{umask:o}"
        folder.mkdir()
        write_json(folder / "summary.json", {"a": 1})
        with atomic.atomic_write(folder / "report.html") as f:
            f.write("<p>")
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, folder / "last.ckpt")
        assert {p.name: mode(p) for p in folder.iterdir()} == {
            "summary.json": expected, "report.html": expected, "last.ckpt": expected}


def test_the_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert atomic.current_umask() == 0o027 and atomic.current_umask() == 0o027
    finally:
        os.umask(before)
