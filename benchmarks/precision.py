"""32-true against bf16-mixed for a training step on this machine, interleaved in one process.

    python benchmarks/precision.py                       # the 19.5M reference model and the ~3M demo model: ~1 minute
    python benchmarks/precision.py --rounds 1 --steps 1  # a quick check that it runs

Each model (architecture, optimizer, batch size and clipping read from its config) takes training steps on random
tokens in both precisions from the same initial weights, rounds of `--steps` steps taking turns. Prints milliseconds
per step (median of `--rounds`) and tokens per second for each precision, and `ratio=` (32-true / bf16-mixed) per
model; the CLI's `trainer.precision: null` picks bf16-mixed on a CPU with bf16 matrix units because of this
measurement.
"""

import argparse

import torch
from common import architecture, interleaved, load_config, optimization, train_step

from tinystories.model import TinyStoriesLM
from tinystories.optim import configure

REFERENCE_LENGTH = 256  # the recipe's batches are left-padded stories: a typical one is ~256 LLaMA-2 tokens
MODELS = {"reference-20m": "configs/tinystories-20m.yaml", "demo-3m": "configs/demo.yaml"}


def shape(config: dict) -> tuple[int, int, int]:
    """Vocabulary, batch size and sequence length a config trains with."""
    data = config["data"]
    vocab = data["tokenizer_vocab_size"] if data.get("tokenizer") is None else architecture(config).vocab_size
    length = data["max_length"] if data.get("packing") else REFERENCE_LENGTH
    return vocab, data["batch_size"], length


def build(config: dict, vocab: int):
    torch.manual_seed(0)
    lm = TinyStoriesLM(architecture(config, vocab_size=vocab), optimization(config))
    optimizer, _ = configure(lm.model.named_parameters(), lm.optimization, total_steps=1000, device="cpu")
    return lm, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per precision per round")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; median of {args.rounds} rounds of {args.steps} steps")
    for name, path in MODELS.items():
        config = load_config(path)
        vocab, size, length = shape(config)
        torch.manual_seed(1)
        ids = torch.randint(3, vocab, (size, length))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
                 "position_ids": torch.arange(length).expand(size, length)}
        clip = config["trainer"].get("gradient_clip_val")
        runs = {"32-true": build(config, vocab), "bf16-mixed": build(config, vocab)}
        timings = interleaved({p: (lambda i, p=p: train_step(*runs[p], batch, p == "bf16-mixed", clip))
                               for p in runs}, args.rounds, args.steps)
        fp32, bf16 = timings["32-true"].ms, timings["bf16-mixed"].ms
        tokens = size * length
        print(f"{name} ({path}, {size} x {length} tokens): 32-true {fp32:.0f} ms/step ({tokens / fp32 * 1e3:,.0f} "
              f"tok/s), bf16-mixed {bf16:.0f} ms/step ({tokens / bf16 * 1e3:,.0f} tok/s), ratio={fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
