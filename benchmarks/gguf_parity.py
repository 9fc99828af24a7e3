"""GGUF export against llama.cpp itself: file size and parity per tensor type, and llama.cpp's speed against
`generate`'s, in one run.

    python benchmarks/gguf_parity.py                                     # trains both models briefly first: ~14 min
    python benchmarks/gguf_parity.py --demo lightning_logs/demo/checkpoints/last.ckpt --recipe path/to/recipe.ckpt
    python benchmarks/gguf_parity.py --demo_steps 20 --recipe_steps 2 --stories 50 --prompts 4 --rounds 1   # a quick check

The models: configs/demo.yaml (its own byte-level BPE) and configs/tinystories-20m.yaml (LLaMA-2), each trained as
shipped on ../shared's real stories for `--demo_steps` / `--recipe_steps` unless a checkpoint is given. Each is
exported once, then written as GGUF in f32, f16, bf16 and q8_0. llama.cpp (its server, from `xllamacpp`, with its
default settings: f16 keys/values, flash attention where it picks it) then:
- tokenizes the validation stories (f32 file; the vocabulary does not depend on the type): texts whose ids differ;
- continues the paper's 44 prompts greedily for 64 tokens: prompts equal to `generate --do_sample false` token for
  token, near-ties (transformers' two candidates within 1e-3: the rest of that prompt is not compared), differences;
- scores one validation story: the largest |log p| difference against transformers over the 5 likeliest next tokens
  at every position.
f32 is also run `exact` (f32 keys/values, no flash attention). Speed, each model: the 44 prompts continued greedily
for up to 256 tokens by `sample_stories` (what `generate` runs) one prompt at a time and in its default batches of 8,
and by llama.cpp (f32 and q8_0) one request at a time, each with 2 threads, taking turns for `--rounds` rounds (the
fastest of each counts); `ratio=` llama.cpp's tokens/s over generate's, both by the wall clock.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import xllamacpp
import yaml
from common import LLAMA_TOKENIZER, ROOT, SHARED, TINYSTORIES, local, machine

sys.path.insert(0, str(ROOT))
from tests.llama_cpp import LlamaCpp, greedy_parity, logprob_parity, tokenization_mismatches  # noqa: E402

from tinystories.__main__ import main as run_verb  # noqa: E402
from tinystories.checkpoint import load  # noqa: E402
from tinystories.generate import sample_stories  # noqa: E402
from tinystories.sources import load_split  # noqa: E402

TYPES = ("f32", "f16", "bf16", "q8_0")


def train(config: str, steps: int, out: Path, *data: str) -> Path:
    run_verb(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--data.dataset", local(TINYSTORIES),
              *data, "--trainer.default_root_dir", str(out), "--run", config, "--trainer.max_steps", str(steps),
              "--trainer.max_epochs", "-1", "--trainer.enable_progress_bar", "false", "--samples.prompts", "[]"])
    return out / "lightning_logs" / config / "checkpoints" / "last.ckpt"


def parity(name: str, ckpt: Path, out: Path, stories: list[str], prompts: list[str]) -> Path:
    folder = out / name
    run_verb(["export", "--ckpt_path", str(ckpt), "--out_dir", str(folder), "--gguf", "--gguf_type", "f32"])
    loaded = load(folder)
    model, tokenizer = loaded.model, loaded.tokenizer
    story = tokenizer(stories[0], add_special_tokens=False)["input_ids"]
    print(f"\n{name}: {model.num_parameters():,} parameters, step {load(ckpt).step}, vocabulary {len(tokenizer):,}; "
          f"safetensors {(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB")
    with LlamaCpp(folder / f"{name}.gguf") as cpp:
        bad = tokenization_mismatches(tokenizer, cpp, stories)
    print(f"  tokenization: {len(stories) - len(bad):,} of {len(stories):,} stories to the same ids")
    print(f"  {'type':<10} {'MB':>6} {'greedy same':>11} {'ties':>4} {'differ':>6} {'tokens':>6} {'max |dlogp|':>11}")
    for tensor_type in ("f32 exact", *TYPES):
        kind = tensor_type.split()[0]
        if tensor_type != "f32 exact" and kind != "f32":
            run_verb(["export", "--ckpt_path", str(folder), "--gguf_type", kind, "--overwrite"])
        gguf = folder / f"{name}.gguf"
        with LlamaCpp(gguf, exact=tensor_type.endswith("exact")) as cpp:
            result = greedy_parity(model, tokenizer, cpp, prompts, n=64)
            worst = logprob_parity(model, cpp, story)
        print(f"  {tensor_type:<10} {gguf.stat().st_size / 1e6:>6.1f} {result.same:>11} {len(result.ties):>4} "
              f"{len(result.differ):>6} {result.tokens:>6} {worst:>11.5f}", flush=True)
    return folder


def speed(folder: Path, prompts: list[str], new_tokens: int, rounds: int) -> None:
    """Greedy stories of the prompts: `sample_stories` (generate's code) one prompt at a time and in batches of 8,
    and llama.cpp (f32 and q8_0 files) one request at a time, taking turns for `rounds` rounds; the fastest round of
    each counts (a shared VM's speed swings by a third from minute to minute)."""
    loaded = load(folder)
    torch.set_num_threads(2)
    for tensor_type in ("f32", "q8_0"):  # each file under its own name
        run_verb(["export", "--ckpt_path", str(folder), "--gguf_type", tensor_type, "--overwrite"])
        (folder / f"{folder.name}.gguf").rename(folder / f"{tensor_type}.gguf")

    def generate(batch_size: int):
        start = time.perf_counter()
        stories = sample_stories(loaded.model, loaded.tokenizer, prompts, max_new_tokens=new_tokens, do_sample=False,
                                 batch_size=batch_size)
        return sum(s["new_tokens"] for s in stories), time.perf_counter() - start, None

    def llama_cpp(tensor_type: str):
        # Started for its turn only: an idle server's threads keep polling for work and would slow the others.
        with LlamaCpp(folder / f"{tensor_type}.gguf", threads=2) as cpp:
            cpp.complete(prompts[0], 8)  # warm up
            start = time.perf_counter()
            replies = [cpp.complete(prompt, new_tokens) for prompt in prompts]
            seconds = time.perf_counter() - start
        return (sum(len(r["tokens"]) for r in replies), seconds,
                sum(r["timings"]["predicted_ms"] for r in replies) / 1000)

    variants = {"generate, batch 1": lambda: generate(1), "generate, batch 8": lambda: generate(8),
                "llama.cpp f32, one at a time": lambda: llama_cpp("f32"),
                "llama.cpp q8_0, one at a time": lambda: llama_cpp("q8_0")}
    best = {}
    for _ in range(rounds):
        for label, run in variants.items():
            tokens, seconds, decoding = run()
            if label not in best or seconds < best[label][1]:
                best[label] = (tokens, seconds, decoding)
    print(f"\nspeed, {folder.name} model, {len(prompts)} prompts, greedy, up to {new_tokens} new tokens, 2 threads, "
          f"fastest of {rounds} rounds:")
    for label, (tokens, seconds, decoding) in best.items():
        own = f" (its own timing of decoding: {tokens / decoding:,.0f} tokens/s)" if decoding else ""
        print(f"  {label:<30} {tokens:>6} tokens {seconds:>7.1f} s {tokens / seconds:>8,.0f} tokens/s{own}")
    speed_of = {k: t / s for k, (t, s, _) in best.items()}
    print(f"ratio={speed_of['llama.cpp f32, one at a time'] / speed_of['generate, batch 1']:.2f} (llama.cpp f32 / "
          f"generate, one prompt at a time); against generate's batches of 8: "
          f"{speed_of['llama.cpp f32, one at a time'] / speed_of['generate, batch 8']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a checkpoint of configs/demo.yaml (default: train one)")
    parser.add_argument("--recipe", type=Path, help="a checkpoint with LLaMA-2's tokenizer (default: train one)")
    parser.add_argument("--demo_steps", type=int, default=300)
    parser.add_argument("--recipe_steps", type=int, default=30)
    parser.add_argument("--stories", type=int, default=1507, help="validation stories tokenized")
    parser.add_argument("--prompts", type=int, default=44, help="the paper's prompts continued")
    parser.add_argument("--new_tokens", type=int, default=256, help="speed: most new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=3, help="speed: rounds of every variant, taking turns")
    parser.add_argument("--out", type=Path, help="folder for runs and exports (default: a new temporary one)")
    args = parser.parse_args()
    print(machine(192, None))
    out = args.out or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    print(f"runs and exports in {out}")
    stories = list(load_split(local(TINYSTORIES), "validation", 0)["text"])[:args.stories]
    prompts = yaml.safe_load(Path(local(SHARED / "eval" / "Evaluation prompts.yaml")).read_text())[:args.prompts]
    demo = args.demo or train("demo", args.demo_steps, out / "runs")
    recipe = args.recipe or train("tinystories-20m", args.recipe_steps, out / "runs", "--data.tokenizer",
                                  local(LLAMA_TOKENIZER), "--data.train_split", "train[:200]",
                                  "--data.val_split", "validation[:16]")
    folders = [parity("demo", demo, out, stories, prompts), parity("recipe", recipe, out, stories, prompts)]
    print(f"\nllama.cpp: xllamacpp {xllamacpp.__version__}, {xllamacpp.get_system_info().strip()}")
    for folder in folders:
        speed(folder, prompts, args.new_tokens, args.rounds)


if __name__ == "__main__":
    main()
