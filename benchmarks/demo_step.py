"""A demo training step with and without two CPU levers, interleaved in one process.

    python benchmarks/demo_step.py            # ~2 minutes on 2 cores

Times configs/demo.yaml's training step (forward, backward, clip, Muon + AdamW; bf16 autocast; batch 8 of packed
512-token blocks of the real stories) three ways, from the same weights and batches:
- `before`: torch.optim.Muon (Newton-Schulz one matrix at a time) and the fused loss in 1,024-row chunks;
- `batched Muon`: `tinystories.optim.BatchedMuon` (Newton-Schulz batched by matrix shape);
- `both`: that and the loss in 256-row chunks, the current defaults (`tinystories/loss.py`).
Rounds of `--steps` steps each take turns, so all three see the same machine; prints the median ms per step of each
and `ratio=` (before / both).
"""

import argparse
import itertools
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from levers import ALL, DEMO  # noqa: E402

from tinystories import loss, optim  # noqa: E402
from tinystories.data import TinyStoriesData  # noqa: E402
from tinystories.model import TinyStoriesLM  # noqa: E402

DEFAULT_CHUNKS = loss.CHUNK_ELEMENTS["cpu"], loss.MIN_ROWS["cpu"], loss.GROUP_ROWS["cpu"]
BEFORE_CHUNKS = 2**22, 1, 8 * 2**22 // 4096  # 1,024-row chunks at the demo's 4k vocabulary, 8,192 rows a group
VARIANTS = {"before": (torch.optim.Muon, BEFORE_CHUNKS), "batched Muon": (optim.BatchedMuon, BEFORE_CHUNKS),
            "both": (optim.BatchedMuon, DEFAULT_CHUNKS)}


def set_chunks(chunks: tuple[int, int, int]) -> None:
    loss.CHUNK_ELEMENTS["cpu"], loss.MIN_ROWS["cpu"], loss.GROUP_ROWS["cpu"] = chunks


def build(dm: TinyStoriesData, muon: type, steps: int):
    torch.manual_seed(3407)
    model = TinyStoriesLM(vocab_size=dm.vocab_size, pad_token_id=dm.pad_token_id, bos_token_id=dm.bos_token_id,
                          eos_token_id=dm.eos_token_id, **{**DEMO, **ALL})
    model._trainer = SimpleNamespace(estimated_stepping_batches=steps)  # all configure_optimizers reads
    original, optim.BatchedMuon = optim.BatchedMuon, muon
    try:
        optimizer = model.configure_optimizers()["optimizer"]
    finally:
        optim.BatchedMuon = original
    assert type(optimizer.muon) is muon
    return model, optimizer


def step(model, optimizer, batch) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nats, count = model.nats(batch)
    (nats / count).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def interleaved(runs: dict, batches: list, rounds: int, prepare: Callable[[str], None]) -> tuple[dict, dict]:
    """Rounds in which each (model, optimizer) of `runs` steps through `batches` in turn, after `prepare(name)`.

    Round 0 warms up. Returns the median ms per step of each, and its median page faults per step.
    """
    times, faults = {name: [] for name in runs}, {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name, run in runs.items():
            prepare(name)
            start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for batch in batches:
                step(*run, batch)
            if round_:
                times[name].append((time.perf_counter() - start) / len(batches))
                faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / len(batches))
    return ({name: statistics.median(t) * 1e3 for name, t in times.items()},
            {name: statistics.median(f) for name, f in faults.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                 / "tinystories"))
    args = parser.parse_args()
    dm = TinyStoriesData(dataset=args.dataset, max_length=512, batch_size=8, packing=True)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(itertools.islice(dm.train_dataloader(), args.steps))
    runs = {name: build(dm, muon, args.rounds * args.steps) for name, (muon, _) in VARIANTS.items()}
    medians, _ = interleaved(runs, batches, args.rounds, lambda name: set_chunks(VARIANTS[name][1]))
    set_chunks(DEFAULT_CHUNKS)
    print(f"torch threads: {torch.get_num_threads()}; demo model, 8 x 512 tokens, bf16 autocast; median of "
          f"{args.rounds} rounds of {args.steps} steps")
    for name, ms in medians.items():
        print(f"{name}: {ms:.0f} ms/step")
    print(f"ratio={medians['before'] / medians['both']:.2f}")


if __name__ == "__main__":
    main()
