"""AdamW against Muon (+AdamW) on the demo model, real stories, the same number of steps, in one script.

    python benchmarks/optimizers.py --steps 400     # about 3 minutes per setting on 2 cores

Each setting trains `configs/demo.yaml`'s model (packed 512-token blocks, batch 8, bf16 autocast, clip 1.0, 50
warmup steps, cosine to zero) from the same seed and data order with `benchmarks/levers.py`'s loop, then prints bits
per byte on the first 400 validation stories (one story per sample). Settings: (AdamW lr, Muon lr or none).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from levers import run  # noqa: E402
from tinystories.data import TinyStoriesData  # noqa: E402

SETTINGS = [(6e-3, None), (1e-2, None), (6e-3, 6e-3), (6e-3, 1e-2), (1e-2, 6e-3)]


def overrides(lr: float, muon_lr) -> dict:
    if muon_lr is None:
        return dict(optimizer="adamw", learning_rate=lr, weight_decay=0.1)
    return dict(optimizer="muon", learning_rate=lr, muon_learning_rate=muon_lr, weight_decay=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--dataset", default="../shared/data/tinystories")
    args = parser.parse_args()
    dm = TinyStoriesData(dataset=args.dataset, max_length=512, batch_size=8, packing=True)
    dm.prepare_data()
    dm.setup("fit")
    for lr, muon_lr in SETTINGS:
        name = f"AdamW {lr:g}" if muon_lr is None else f"Muon {muon_lr:g} + AdamW {lr:g}"
        bpb, _ = run(dm, overrides(lr, muon_lr), args.steps)
        print(f"{name}: bpb={bpb:.4f} after {args.steps} steps", flush=True)


if __name__ == "__main__":
    main()
