"""AdamW against Muon (+AdamW) on the demo model, real stories, the same number of steps, in one script.

    python benchmarks/optimizers.py --steps 400     # about 3 minutes per setting on 2 cores

Each setting trains `configs/demo.yaml`'s model (packed 512-token blocks, batch 8, bf16 autocast, clip 1.0, 50
warmup steps, cosine to zero) from the same seed and data order, then prints bits per byte on the first 400
validation stories (one story per sample). Settings: (AdamW lr, Muon lr or none).
"""

import argparse
import itertools
import math

import torch
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from tinystories.data import TinyStoriesData
from tinystories.model import TinyStoriesLM
from tinystories.optim import MuonWithAdamW

SETTINGS = [(6e-3, None), (1e-2, None), (6e-3, 6e-3), (6e-3, 1e-2), (1e-2, 6e-3)]


def run(dm: TinyStoriesData, lr: float, muon_lr, steps: int) -> float:
    torch.manual_seed(3407)
    model = TinyStoriesLM(vocab_size=dm.vocab_size, hidden_size=192, num_attention_heads=3, num_key_value_heads=3,
                          pad_token_id=dm.pad_token_id, bos_token_id=dm.bos_token_id, eos_token_id=dm.eos_token_id)
    if muon_lr is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    else:
        optimizer = MuonWithAdamW(model.model.named_parameters(), lr=lr, muon_lr=muon_lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 50, steps)
    batches = itertools.cycle(dm.train_dataloader())
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nats, count = model.nats(next(batches))
        (nats / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    total_nats, total_bytes = 0.0, 0
    val = dm.splits[dm.hparams.val_split].select(range(400))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in DataLoader(val, batch_size=16, collate_fn=dm.collate):
            total_nats += float(model.nats(batch)[0])
            total_bytes += int(batch["num_bytes"].sum())
    return total_nats / math.log(2) / total_bytes


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
        print(f"{name}: bpb={run(dm, lr, muon_lr, args.steps):.4f} after {args.steps} steps", flush=True)


if __name__ == "__main__":
    main()
