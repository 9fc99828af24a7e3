"""Whole training steps with and without the CPU levers, interleaved in one process.

    python benchmarks/cpu_step.py               # configs/tinystories-20m-fast.yaml's 19.5M model: ~5 minutes, 2 cores
    python benchmarks/cpu_step.py --model demo  # configs/demo.yaml's model and its 4k BPE: ~3 minutes
    python benchmarks/cpu_step.py --model demo --rounds 1 --steps 1   # a quick check that it runs

Times a training step (forward, backward, clip, the config's optimizer; the precision `fit` picks on this CPU; batch
`--batch_size` of the config's packed blocks of the real stories) five ways, each from the same weights and batches.
Model, optimizer, block length and clipping are read from the config:
- `before`: transformers' `sdpa` attention (bf16 under autocast), torch's default AdamW kernel (not fused), glibc's
  malloc defaults;
- `+ memory kept`: `ReuseFreedMemory`'s malloc settings, what `fit` sets on a CPU (switched per variant with
  `mallopt`; memory the heap kept from the previous variant stays in it until glibc trims it);
- `+ fp32 attention`: and `tinystories.attention` (heads under 64 dimensions in fp32 on the CPU; the demo's heads of
  64 are unchanged by it);
- `+ fused AdamW`: and AdamW's fused CPU kernel: what `tinystories.optim.configure` builds, the defaults without
  `model.compile`;
- `+ compiled layers`: and each decoder layer compiled (`model.compile: true`; compiling happens in the warm-up
  round, which is not timed).
Rounds of `--steps` steps take turns, so all five see the same machine; prints the median ms and page faults per
step of each, `ratio=` (before / + fused AdamW) and `compiled_ratio=` (+ fused AdamW / + compiled layers).
"""

import argparse
import itertools

import torch
from common import LLAMA_TOKENIZER, TINYSTORIES, architecture, data_module, interleaved, load_config, optimization
from common import token_ids, train_step

from tinystories.callbacks import ReuseFreedMemory
from tinystories.precision import pick
from tinystories.model import TinyStoriesLM
from tinystories.optim import configure

CONFIGS = {"reference": "configs/tinystories-20m-fast.yaml", "demo": "configs/demo.yaml"}
# name: (sdpa attention, fused AdamW, memory kept, compiled layers)
VARIANTS = {"before": (True, False, False, False), "+ memory kept": (True, False, True, False),
            "+ fp32 attention": (False, False, True, False), "+ fused AdamW": (False, True, True, False),
            "+ compiled layers": (False, True, True, True)}


def without_fused_adamw(optimizer: torch.optim.Optimizer) -> None:
    """Turn AdamW's fused kernel off (torch's default kernel instead), the optimizer otherwise as `configure` built it.

    `fused` is a per-group option that AdamW reads at every step; `MuonWithAdamW` keeps its AdamW as `.adamw`.
    """
    for group in getattr(optimizer, "adamw", optimizer).param_groups:
        group["fused"] = None


def build(config: dict, dm, sdpa: bool, fused: bool, compile: bool):
    torch.manual_seed(3407)
    lm = TinyStoriesLM(architecture(config, **token_ids(dm)), optimization(config), compile=compile)
    lm.configure_model()  # compiles each decoder layer (training steps only) with compile=True
    if sdpa:
        lm.model.set_attn_implementation("sdpa")
    optimizer, _ = configure(lm.model.named_parameters(), lm.optimization, total_steps=1000, device="cpu")
    if not fused:
        without_fused_adamw(optimizer)
    return lm, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(CONFIGS), default="reference")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--batch_size", type=int, default=8, help="a CPU-sized batch (the fast config's is 128)")
    parser.add_argument("--dataset", default=str(TINYSTORIES))
    parser.add_argument("--tokenizer", default=str(LLAMA_TOKENIZER), help="for the reference model; the demo trains "
                        "its own BPE on the stories (data.tokenizer: null)")
    args = parser.parse_args()
    config = load_config(CONFIGS[args.model])
    tokenizer = {"tokenizer": args.tokenizer} if args.model == "reference" else {}
    dm = data_module(config, dataset=args.dataset, batch_size=args.batch_size, num_workers=0, **tokenizer)
    batches = list(itertools.islice(dm.train_dataloader(), args.steps))
    hidden = config["model"]["architecture"]["hidden_size"]
    precision = config["trainer"].get("precision") or pick("cpu", hidden).precision
    bf16, clip = precision.startswith("bf16"), config["trainer"].get("gradient_clip_val")
    runs = {name: build(config, dm, sdpa, fused, compile) for name, (sdpa, fused, _, compile) in VARIANTS.items()}
    steps = {name: (lambda i, run=run: train_step(*run, batches[i], bf16, clip)) for name, run in runs.items()}
    malloc = ReuseFreedMemory()
    try:
        timings = interleaved(steps, args.rounds, args.steps,
                              before=lambda name: malloc.set(malloc.KEEP if VARIANTS[name][2] else malloc.DEFAULTS))
    finally:
        malloc.set(malloc.DEFAULTS)
    print(f"torch threads: {torch.get_num_threads()}; {args.model} model ({CONFIGS[args.model]}), "
          f"{args.batch_size} x {dm.hparams.max_length} tokens, {precision}; median of {args.rounds} rounds of "
          f"{args.steps} steps")
    for name, timing in timings.items():
        print(f"{name}: {timing.ms:.0f} ms/step, {timing.faults:,.0f} page faults/step")
    print(f"ratio={timings['before'].ms / timings['+ fused AdamW'].ms:.2f}")
    print(f"compiled_ratio={timings['+ fused AdamW'].ms / timings['+ compiled layers'].ms:.2f}")


if __name__ == "__main__":
    main()
