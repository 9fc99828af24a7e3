"""Whole training steps with and without the CPU levers, interleaved in one process.

    python benchmarks/cpu_step.py               # the 19.5M reference model, LLaMA-2 tokenizer: ~5 minutes on 2 cores
    python benchmarks/cpu_step.py --model demo  # configs/demo.yaml's model, 4k BPE: ~3 minutes

Times a training step (forward, backward, clip, Muon + AdamW; bf16 autocast; batch 8 of packed 512-token blocks of
the real stories) five ways, each from the same weights and batches:
- `before`: transformers' `sdpa` attention (bf16 under autocast), torch's default (foreach) AdamW, glibc's malloc
  defaults;
- `+ memory kept`: `ReuseFreedMemory`'s malloc settings, what `fit` sets on a CPU (switched per variant with
  `mallopt`; memory the heap kept from the previous variant stays in it until glibc trims it);
- `+ fp32 attention`: and `tinystories.attention` (heads under 64 dimensions in fp32 on the CPU; the demo's heads of
  64 are unchanged by it);
- `+ fused AdamW`: and AdamW's fused CPU kernel: the current defaults without `model.compile`;
- `+ compiled layers`: and each decoder layer compiled (`model.compile: true`, as in configs/demo.yaml; compiling
  happens in the warm-up round, which is not timed).
Rounds of `--steps` steps take turns, so all five see the same machine; prints the median ms and page faults per
step of each, `ratio=` (before / + fused AdamW) and `compiled_ratio=` (+ fused AdamW / + compiled layers).
"""

import argparse
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_step import interleaved  # noqa: E402
from levers import ALL, DEMO  # noqa: E402

from tinystories.callbacks import ReuseFreedMemory  # noqa: E402
from tinystories.data import TinyStoriesData  # noqa: E402
from tinystories.model import TinyStoriesLM  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# benchmarks/throughput.py's settings for our fit of the 19.5M model (configs/tinystories-20m-fast.yaml on a CPU)
REFERENCE = dict(optimizer="muon", muon_learning_rate=0.006, learning_rate=0.003, betas=(0.9, 0.95), warmup_steps=10,
                 lr_schedule="wsd", zero_init_residual=True)
# name: (attention, fused AdamW, memory kept, compiled layers)
VARIANTS = {"before": ("sdpa", False, False, False), "+ memory kept": ("sdpa", False, True, False),
            "+ fp32 attention": (None, False, True, False), "+ fused AdamW": (None, True, True, False),
            "+ compiled layers": (None, True, True, True)}


def build(dm: TinyStoriesData, hparams: dict, attention, fused: bool, compile: bool = False):
    torch.manual_seed(3407)
    model = TinyStoriesLM(vocab_size=dm.vocab_size, pad_token_id=dm.pad_token_id, bos_token_id=dm.bos_token_id,
                          eos_token_id=dm.eos_token_id, compile=compile, **hparams)
    model.configure_model()  # compiles each decoder layer (training steps only) with compile=True
    if attention:
        model.model.set_attn_implementation(attention)
    model._trainer = SimpleNamespace(estimated_stepping_batches=1000)  # all configure_optimizers reads
    optimizer = model.configure_optimizers()["optimizer"]
    for group in optimizer.adamw.param_groups:
        group["fused"] = fused or None
    return model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["reference", "demo"], default="reference")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--dataset", default=str(SHARED / "tinystories"))
    parser.add_argument("--tokenizer", default=str(SHARED / "llama2-tokenizer"), help="for the reference model")
    args = parser.parse_args()
    if args.model == "demo":  # the demo's own 4k BPE, trained on the stories (cached)
        dm = TinyStoriesData(dataset=args.dataset, max_length=512, batch_size=8, packing=True)
        hparams = {**DEMO, **ALL}
    else:
        dm = TinyStoriesData(dataset=args.dataset, tokenizer=args.tokenizer, max_length=512, batch_size=8,
                             packing=True)
        hparams = REFERENCE
    dm.prepare_data()
    dm.setup("fit")
    batches = list(itertools.islice(dm.train_dataloader(), args.steps))
    runs = {name: build(dm, hparams, attention, fused, compile)
            for name, (attention, fused, _, compile) in VARIANTS.items()}
    malloc = ReuseFreedMemory()
    try:
        medians, faults = interleaved(runs, batches, args.rounds,
                                      lambda name: malloc.set(malloc.KEEP if VARIANTS[name][2] else malloc.DEFAULTS))
    finally:
        malloc.set(malloc.DEFAULTS)
    print(f"torch threads: {torch.get_num_threads()}; {args.model} model, 8 x 512 tokens, bf16 autocast; median of "
          f"{args.rounds} rounds of {args.steps} steps")
    for name, ms in medians.items():
        print(f"{name}: {ms:.0f} ms/step, {faults[name]:,.0f} page faults/step")
    print(f"ratio={medians['before'] / medians['+ fused AdamW']:.2f}")
    print(f"compiled_ratio={medians['+ fused AdamW'] / medians['+ compiled layers']:.2f}")


if __name__ == "__main__":
    main()
