"""DDP on 2 CPU processes: ranks see different data, only rank 0 writes, validation metrics cover each story once.

One `fit` of the tiny model (`--trainer.strategy ddp --trainer.devices 2`) is shared by the tests: 4 steps,
validation every 2 on 17 stories (odd, so Lightning's padding `DistributedSampler` would repeat one), throughput every
2 steps, one sample story per validation, `model.optimization.schedule_by_max_time` on. Callbacks from tests/helpers.py record
what each rank did, per rank.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DistributedSampler, SequentialSampler

from tests.conftest import ROOT, fit_args
from tests.helpers import read_events, read_records
from tests.test_train import scalars
from tinystories.cli import cli_main
from tinystories.data import TinyStoriesData

VAL_STORIES = 17


def ddp_args(root, tokenizer_dir, *extra: str) -> list[str]:
    # max_length 256: at 128 every synthetic story is cut to full length, and both ranks' token counts would tie.
    return fit_args(root, tokenizer_dir, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                    "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "2",
                    "--data.val_split", f"validation[:{VAL_STORIES}]", "--data.max_length", "256", *extra)


def callback(name: str, out_dir) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"tests.helpers.{name}",
                                                 "init_args": {"out_dir": str(out_dir)}})


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("ddp")
    args = ddp_args(root, tiny_tokenizer_dir, "--trainer.strategy", "ddp", "--samples.prompts", '["Once upon a time"]',
                    "--samples.max_new_tokens", "8", callback("RecordBatches", root / "batches"),
                    # rank 0's clock is broadcast every log_every_n_steps steps: this run checks the collectives match
                    "--model.optimization.schedule_by_max_time", "true", "--trainer.max_time", "00:01:00:00",
                    callback("RecordRanks", root / "events"))
    args[args.index("--trainer.devices") + 1] = "2"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tinystories", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sync_dist=True" not in done.stderr  # val/* come reduced by torchmetrics: no advice to reduce them again
    return root


def run_dir(root):
    return root / "lightning_logs" / "version_0"


@pytest.mark.slow
def test_ranks_train_on_different_samples(ddp_run):
    rank0, rank1 = read_records(ddp_run / "batches", 0), read_records(ddp_run / "batches", 1)
    assert len(rank0) == len(rank1) == 4 and rank0[0]["pid"] != rank1[0]["pid"]
    samples0 = {tuple(s) for row in rank0 for s in row["samples"]}
    samples1 = {tuple(s) for row in rank1 for s in row["samples"]}
    assert samples0 and samples1 and not samples0 & samples1


@pytest.mark.slow
def test_only_rank_zero_writes_logs_and_checkpoints(ddp_run):
    run = run_dir(ddp_run)
    written = sorted(str(p.relative_to(ddp_run / "lightning_logs")) for p in (ddp_run / "lightning_logs").rglob("*")
                     if p.is_file())
    checkpoints = [name for name in written if name.startswith("version_0/checkpoints/")]
    events = [name for name in written if "tfevents" in name]
    # One version folder, one events file, no per-rank or temporary files beside the checkpoints.
    assert written == sorted(["version_0/config.yaml", "version_0/hparams.yaml", *events, *checkpoints]), written
    assert len(events) == 1 and events[0].startswith("version_0/events.out.tfevents.")
    assert len(checkpoints) == 3 and "version_0/checkpoints/last.ckpt" in checkpoints  # 2 best + last
    assert not [p for p in ddp_run.rglob("*") if p.name.endswith(".tmp")]

    # Every rank reaches the checkpoint code, but Lightning's strategy passes only rank 0's saves to the plugin.
    saves = read_events(ddp_run / "events", 0, "save_checkpoint")
    assert saves and {row["plugin"] for row in saves} == {"AtomicCheckpointIO"}
    assert {os.path.basename(row["path"]) for row in saves} == {os.path.basename(c) for c in checkpoints}
    assert read_events(ddp_run / "events", 1, "save_checkpoint") == []
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["train_shape"]["world_size"] == 2


@pytest.mark.slow
def test_sample_stories_come_from_rank_zero_only(ddp_run):
    assert read_events(ddp_run / "events", 0, "fit_end")[0]["sample_stories"] == [1]
    assert read_events(ddp_run / "events", 1, "fit_end")[0]["sample_stories"] == [0]
    events = EventAccumulator(str(run_dir(ddp_run)))
    events.Reload()
    texts = events.Tensors("samples/text_summary")
    assert [e.step for e in texts] == [2, 4]  # once per validation, from the one writer
    assert all(e.tensor_proto.string_val[0].decode().startswith("Once upon a time") for e in texts)


@pytest.mark.slow
def test_throughput_counts_are_summed_over_ranks(ddp_run):
    logged = scalars(run_dir(ddp_run))
    tokens, samples = logged["throughput/tokens_per_sec"], logged["throughput/samples_per_sec"]
    assert [step for step, _ in tokens] == [step for step, _ in samples] == [2, 4]
    batches = {rank: read_events(ddp_run / "events", rank, "train_batch") for rank in (0, 1)}
    for (step, tokens_per_sec), (_, samples_per_sec) in zip(tokens, samples):
        window = {rank: [b for b in rows if step - 2 < b["step"] <= step] for rank, rows in batches.items()}
        real = {rank: sum(b["tokens"] for b in rows) for rank, rows in window.items()}
        count = {rank: sum(b["samples"] for b in rows) for rank, rows in window.items()}
        assert count == {0: 16, 1: 16} and real[0] != real[1]  # so rank 0's own ratio would differ
        # Both rates share the elapsed time, so their ratio is the window's real tokens per sample over all ranks.
        assert tokens_per_sec / samples_per_sec == pytest.approx((real[0] + real[1]) / 32, rel=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # validate reads a checkpoint from another run
def test_validation_metrics_are_reduced_over_ranks_without_repeats(ddp_run, tiny_tokenizer_dir, tmp_path):
    # The single-process reference: `validate` of the checkpoint written after the last validation.
    last = run_dir(ddp_run) / "checkpoints" / "last.ckpt"
    args = ddp_args(tmp_path, tiny_tokenizer_dir, "--ckpt_path", str(last), callback("RecordRanks", tmp_path / "ev"))
    cli = cli_main(["validate", *args[1:]])
    single = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    stories = sorted(s for row in read_events(tmp_path / "ev", 0, "val_batch") for s in row["stories"])
    assert len(stories) == VAL_STORIES

    # Each DDP validation saw every story exactly once over both ranks: no padding repeats. Rank 0 has 9 stories (2
    # batches of 8), rank 1 has 8 (1 batch): uneven batch counts must not hang.
    val_batches = {rank: read_events(ddp_run / "events", rank, "val_batch") for rank in (0, 1)}
    assert [len(val_batches[0]), len(val_batches[1])] == [4, 2]  # per validation: 2 and 1
    for step in (2, 4):
        seen = sorted(s for rows in val_batches.values() for row in rows if row["step"] == step for s in row["stories"])
        assert seen == stories, Counter(map(tuple, seen)).most_common(2)

    logged = scalars(run_dir(ddp_run))
    assert [step for step, _ in logged["val/loss"]] == [1, 3]  # TensorBoard counts from 0
    for name in ("val/loss", "val/bpb", "val/ppl"):
        assert logged[name][-1][1] == pytest.approx(single[name], rel=1e-5), name
    saved = torch.load(last, weights_only=True)["val_metrics"]
    assert saved == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_validation_shards_hold_each_story_once(tiny_tokenizer_dir, world_size):
    dm = TinyStoriesData(tokenizer=str(tiny_tokenizer_dir), synthetic_stories=400, max_length=256, batch_size=8,
                         val_split=f"validation[:{VAL_STORIES}]")
    dm.prepare_data()
    dm.setup("validate")
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)  # no trainer: one process, in order
    shards = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": world_size, "rank": rank})
        sampler = dm.val_dataloader().sampler
        assert isinstance(sampler, DistributedSampler)  # so Lightning does not put its padding one in its place
        shards.append(list(sampler))
    assert sorted(i for shard in shards for i in shard) == list(range(VAL_STORIES))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
