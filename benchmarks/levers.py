"""What each of the demo's training settings buys: the demo model on real stories, the same steps, one setting apart.

    python benchmarks/levers.py                  # every setting below, 400 steps each: ~2.5 minutes each on 2 cores
    python benchmarks/levers.py --only base all  # two of them
    python benchmarks/levers.py --steps 1400 --compile --val_stories 0 --only all muon_weight_decay_0.2
                                                 # a demo's length, scored on every validation story: ~8 minutes each

Each setting trains configs/demo.yaml's model (hidden 192, 4 layers, 3 heads of 64, 4k BPE, packed 512-token blocks,
batch 8, bf16 autocast, clip 1.0, Muon 0.006 + AdamW 0.01, 50 warmup steps) from the same seed and data order, with
the model's own `configure_optimizers`, then prints bits per byte on the first 400 validation stories (one story
per sample; `--val_stories 0` for all of them) and milliseconds per step. `base` is the demo before these settings;
`all` is the first three together; configs/demo.yaml is `muon_weight_decay_0.2`. `--compile` compiles each decoder
layer (`model.compile`) for shorter runs; the result is the same up to float rounding.
"""

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinystories.callbacks import ReuseFreedMemory  # noqa: E402
from tinystories.data import TinyStoriesData  # noqa: E402
from tinystories.model import TinyStoriesLM  # noqa: E402

DEMO = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3,
            max_position_embeddings=512, optimizer="muon", learning_rate=0.01, muon_learning_rate=0.006,
            betas=(0.9, 0.95), weight_decay=0.0, warmup_steps=50)
ALL = dict(zero_init_residual=True, lr_schedule="wsd", decay_fraction=0.4, embedding_learning_rate=0.2)
SETTINGS = {
    "base": {},
    "zero_init_residual": dict(zero_init_residual=True),
    "wsd": dict(lr_schedule="wsd", decay_fraction=0.4),
    "embedding_lr_0.05": dict(embedding_learning_rate=0.05),
    "all": ALL,
    "all_but_embedding_lr_0.05": {**ALL, "embedding_learning_rate": 0.05},
    "all_but_embedding_lr_0.1": {**ALL, "embedding_learning_rate": 0.1},
    "all_decay_0.6": {**ALL, "decay_fraction": 0.6},
    "all_muon_lr_0.01": {**ALL, "muon_learning_rate": 0.01},
    "muon_weight_decay_0.1": {**ALL, "muon_weight_decay": 0.1},
    "muon_weight_decay_0.2": {**ALL, "muon_weight_decay": 0.2},  # configs/demo.yaml
    "muon_weight_decay_0.4": {**ALL, "muon_weight_decay": 0.4},
}


def run(dm: TinyStoriesData, overrides: dict, steps: int, compile: bool = False,
        val_stories: int = 400) -> tuple[float, float]:
    torch.manual_seed(3407)
    model = TinyStoriesLM(vocab_size=dm.vocab_size, pad_token_id=dm.pad_token_id, bos_token_id=dm.bos_token_id,
                          eos_token_id=dm.eos_token_id, compile=compile, **{**DEMO, **overrides})
    model.configure_model()  # compiles (training steps only) with compile=True
    model._trainer = SimpleNamespace(estimated_stepping_batches=steps)  # all configure_optimizers reads
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    batches = itertools.chain.from_iterable(dm.train_dataloader() for _ in itertools.count())  # epoch after epoch
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nats, count = model.nats(next(batches))
        (nats / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    seconds = (time.perf_counter() - start) / steps
    model.eval()
    total_nats, total_bytes = 0.0, 0
    val = dm.splits[dm.hparams.val_split]
    val = val.select(range(val_stories)) if val_stories else val
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in DataLoader(val, batch_size=16, collate_fn=dm.collate):
            total_nats += float(model.nats(batch)[0])
            total_bytes += int(batch["num_bytes"].sum())
    return total_nats / math.log(2) / total_bytes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                 / "tinystories"))
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--compile", action="store_true", help="compile each decoder layer (faster steps)")
    parser.add_argument("--val_stories", type=int, default=400, help="first N validation stories; 0 for all")
    args = parser.parse_args()
    dm = TinyStoriesData(dataset=args.dataset, max_length=512, batch_size=8, packing=True)
    dm.prepare_data()
    dm.setup("fit")
    ReuseFreedMemory().set(ReuseFreedMemory.KEEP)  # as `fit` does on a CPU
    for name in args.only:
        bpb, seconds = run(dm, SETTINGS[name], args.steps, args.compile, args.val_stories)
        print(f"{name}: bpb={bpb:.4f} after {args.steps} steps, {seconds * 1e3:.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
