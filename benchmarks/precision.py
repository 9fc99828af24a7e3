"""32-true against bf16-mixed for a training step on this machine, measured in one process.

    python benchmarks/precision.py            # the 19.5M reference model and the ~3M demo model

Prints milliseconds per step (median of `--steps`) and tokens per second for each precision, and the ratio; the
CLI's `trainer.precision: null` picks bf16-mixed on a CPU with bf16 matrix units because of this measurement.
"""

import argparse
import statistics
import time

import torch

from tinystories.model import TinyStoriesLM

MODELS = {  # name: (model kwargs, batch, sequence length) as in configs/tinystories-20m.yaml and configs/demo.yaml
    "reference-20m": (dict(vocab_size=32000), 4, 256),
    "demo-3m": (dict(vocab_size=4096, hidden_size=192, num_attention_heads=3, num_key_value_heads=3), 8, 512),
}


def step_time(model: TinyStoriesLM, batch: dict, bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            nats, count = model.nats(batch)
        (nats / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    for name, (kwargs, size, length) in MODELS.items():
        torch.manual_seed(0)
        model = TinyStoriesLM(**kwargs)
        ids = torch.randint(3, kwargs["vocab_size"], (size, length))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
                 "position_ids": torch.arange(length).expand(size, length)}
        fp32, bf16 = (step_time(model, batch, flag, args.steps) for flag in (False, True))
        tokens = size * length
        print(f"{name}: 32-true {fp32 * 1e3:.0f} ms/step ({tokens / fp32:.0f} tok/s), "
              f"bf16-mixed {bf16 * 1e3:.0f} ms/step ({tokens / bf16:.0f} tok/s), ratio={fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
