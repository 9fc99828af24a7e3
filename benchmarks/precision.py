"""32-true against bf16-mixed for a training step, for each CPU class this machine can act as, and what
`trainer.precision: null` picks in each.

    python benchmarks/precision.py                       # every class: ~3 minutes on 2 cores
    python benchmarks/precision.py --isa native          # this CPU as it is: ~30 s
    python benchmarks/precision.py --rounds 1 --steps 1  # a quick check that it runs

A class is this CPU with oneDNN limited by `ONEDNN_MAX_CPU_ISA`, as a smaller CPU or a hypervisor would limit it:
AVX2 (most laptops), AVX512_CORE (AVX-512 without bf16), AVX512_CORE_BF16 (AVX-512 bf16 without AMX), and
AVX512_CORE_AMX where this CPU has AMX; `native` is no limit. Each class runs in a process of its own (oneDNN reads
the limit once). There each model (architecture, optimizer, batch size and clipping read from its config) takes
training steps on random tokens in both precisions from the same initial weights, rounds of `--steps` steps taking
turns. Prints, per class, the class as `tinystories.precision.cpu_class` sees it and the pick with its reason; per
model, milliseconds per step (median of `--rounds`) and tokens per second in each precision, and `ratio=` (bf16-mixed's
speed over 32-true's: above 1, bf16 is faster). AVX2 runs one round of one step: bf16 is 20 to 40 times slower there.
"""

import argparse
import os
import subprocess
import sys

import torch
from common import architecture, interleaved, load_config, optimization, train_step

from tinystories.model import TinyStoriesLM
from tinystories.optim import configure
from tinystories.precision import cpu_class, pick

REFERENCE_LENGTH = 256  # the recipe's batches are left-padded stories: a typical one is ~256 LLaMA-2 tokens
MODELS = {"reference-20m": "configs/tinystories-20m.yaml", "demo-3m": "configs/demo.yaml"}
CLASSES = ["native", "AVX512_CORE_BF16", "AVX512_CORE", "AVX2"]


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


def measure(rounds: int, steps: int) -> None:
    """This process's class: its pick, then both precisions' step times for each model."""
    chosen = pick("cpu")
    print(f"  CPU class: {cpu_class()}; null picks {chosen.precision} ({chosen.reason})", flush=True)
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
                               for p in runs}, rounds, steps)
        fp32, bf16 = timings["32-true"].ms, timings["bf16-mixed"].ms
        tokens = size * length
        print(f"  {name} ({path}, {size} x {length} tokens): 32-true {fp32:.0f} ms/step ({tokens / fp32 * 1e3:,.0f} "
              f"tok/s), bf16-mixed {bf16:.0f} ms/step ({tokens / bf16 * 1e3:,.0f} tok/s), ratio={fp32 / bf16:.2f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per precision per round")
    parser.add_argument("--isa", nargs="+", help=f"classes to run (default: {' '.join(CLASSES)}, and "
                                                 "AVX512_CORE_AMX on a CPU with AMX)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one class, in this process
    args = parser.parse_args()
    if args.child:
        return measure(args.rounds, args.steps)
    classes = args.isa or CLASSES + (["AVX512_CORE_AMX"] if torch.cpu._is_amx_tile_supported() else [])
    print(f"torch threads: {torch.get_num_threads()}; median of {args.rounds} rounds of {args.steps} steps; this CPU: "
          f"{cpu_class()}", flush=True)
    for isa in classes:
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        rounds, steps = (1, 1) if isa == "AVX2" else (args.rounds, args.steps)
        if isa != "native":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        print(f"{isa if isa == 'native' else 'ONEDNN_MAX_CPU_ISA=' + isa}:", flush=True)
        subprocess.run([sys.executable, __file__, "--child", "--rounds", str(rounds), "--steps", str(steps)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
