"""What attention's mask and grouped-query handling cost a CPU training step of the 19.5M model: two A/Bs, each
interleaved in one process.

    python benchmarks/mask.py               # ~2 minutes on 2 cores
    python benchmarks/mask.py --rounds 1    # a quick check that it runs

- Left-padded stories (the recipe's batch of 4, fp32): transformers' `sdpa_mask`, which leaves a pad's query row fully
  masked, against `sdpa_mask_every_row_attends` (tinystories/attention.py), which opens such rows.
- Packed blocks (the fast config's CPU batch, 8 x 512, bf16-mixed), which reach SDPA with no mask: SDPA's own
  grouped-query attention (`enable_gqa`, which transformers asks for when there is no mask), against K/V repeated
  first (`needs_repeated_kv`, tinystories/attention.py), as the project does on a CPU.

Prints milliseconds per step (median of `--rounds`) and `ratio=` (A / B) for each.
"""

import argparse

import numpy as np
import torch
from common import CONFIGS, LLAMA_TOKENIZER, TINYSTORIES, architecture, interleaved, load_config, local, train_step
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tinystories import attention
from tinystories.data import collate, tokenize_batch
from tinystories.model import TinyStoriesLM
from tinystories.optim import Optimization, configure
from tinystories.sources import load_split
from tinystories.tokenizer import load_tokenizer, token_bytes


def model_and_optimizer(vocab_size: int):
    torch.manual_seed(0)
    lm = TinyStoriesLM(architecture(load_config(CONFIGS / "tinystories-20m.yaml"), vocab_size=vocab_size))
    optimizer, _ = configure(lm.model.named_parameters(), Optimization(), 1000)
    return lm, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    args = parser.parse_args()
    tokenizer = load_tokenizer(local(LLAMA_TOKENIZER))
    texts = list(load_split(local(TINYSTORIES), "train[:64]")["text"])
    sizes = np.asarray(token_bytes(tokenizer), dtype=np.int64)
    stories = tokenize_batch({"text": texts}, tokenizer, 2048, packing=False, sizes=sizes)["input_ids"]
    blocks = tokenize_batch({"text": texts}, tokenizer, 512, packing=True, sizes=sizes)["input_ids"]
    padded = [collate([{"input_ids": x, "num_bytes": 0} for x in stories[i:i + 4]], tokenizer.pad_token_id)
              for i in range(0, 4 * args.steps, 4)]
    packed = [collate([{"input_ids": x, "num_bytes": 0} for x in blocks[i:i + 8]], tokenizer.pad_token_id)
              for i in range(0, 8 * args.steps, 8)]
    assert all(b["padded"] for b in padded) and not any(b["padded"] for b in packed)
    lm, optimizer = model_and_optimizer(len(tokenizer))
    masks = {"sdpa_mask": sdpa_mask, "every row attends": attention.sdpa_mask_every_row_attends}
    print(f"torch threads: {torch.get_num_threads()}; 19.5M model, {args.steps} steps a variant a round")

    def mask_variant(name):
        AttentionMaskInterface.register(attention.ATTENTION, masks[name])

    timings = interleaved({name: (lambda i: train_step(lm, optimizer, padded[i], bf16=False)) for name in masks},
                          args.rounds, args.steps, before=mask_variant)
    mask_variant("every row attends")
    a, b = timings["sdpa_mask"].ms, timings["every row attends"].ms
    print(f"left-padded batch of 4, fp32: sdpa_mask {a:.0f} ms, every row attends {b:.0f} ms; ratio={a / b:.3f}")
    repeated = attention.needs_repeated_kv

    def kv_variant(name):
        attention.needs_repeated_kv = repeated if name == "repeated K/V" else (lambda device: False)

    variants = {name: (lambda i: train_step(lm, optimizer, packed[i], bf16=True)) for name in ("enable_gqa",
                                                                                              "repeated K/V")}
    timings = interleaved(variants, args.rounds, args.steps, before=kv_variant)
    attention.needs_repeated_kv = repeated
    a, b = timings["enable_gqa"].ms, timings["repeated K/V"].ms
    print(f"packed batch of 8 x 512, bf16-mixed, no mask: enable_gqa {a:.0f} ms, repeated K/V {b:.0f} ms; "
          f"ratio={a / b:.3f}")


if __name__ == "__main__":
    main()
