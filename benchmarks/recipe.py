"""The reference recipe trained to the end, three ways, on the same stories and machine: is the port faithful, and how
much sooner does the fast config reach the recipe's final held-out loss?

    python benchmarks/recipe.py                   # all 7,711 training stories of ../shared/data: ~1.5 h on 2 cores
    python benchmarks/recipe.py --stories 1000    # ~25 minutes on 2 cores
    python benchmarks/recipe.py --smoke           # every arm for a few steps: a check that it runs (the test suite)

(a) The recipe as its post writes it: a plain `transformers.Trainer` for 2 epochs, fp32. Each story tokenized without
    special tokens, its last 2,047 tokens kept and EOS appended; `DataCollatorForLanguageModeling(mlm=False)` with
    left padding (pad = `<unk>`); `TrainingArguments` with batch 4, lr 1e-4, cosine, 2 epochs, seed 3407 and the
    defaults for everything else (AdamW eps 1e-8, no weight decay, no warmup, `max_grad_norm=1.0`).
(b) The port: `python -m tinystories fit --config configs/tinystories-20m.yaml` through the project's CLI (in this
    process), 2 epochs, in (a)'s precision (fp32). Where `trainer.precision: null` picks bf16-mixed on this CPU, the
    port runs a second time as shipped, in bf16-mixed: (b2), with a fidelity of its own.
(c) The fast config, `configs/tinystories-20m-fast.yaml` sized for a 2-core CPU (as benchmarks/throughput.py sizes
    it), at the precision `null` picks on this CPU: every run complete, warmup to decay, with its token budget given in advance. Budgets are searched (at most
    `--tries` runs) for the shortest whose run ends at or below (a)'s final held-out loss; that run is reported.

All start from the same initial weights (the recipe's model at seed 3407). Held-out loss is measured the same way for
every arm, with the training clock paused: the same held-out stories (the first `--heldout` of the validation split,
never trained on), left-padded, fp32, nats per real token with the LLaMA-2 tokenizer, at step 0 and at `--points`
evenly spaced steps up to the last. Training wall time runs from the start of the first step to the end of the last,
data loading and optimizer included; tokenizing the stories before training is not in it.

The first line prints the CPU class and the precision `null` picks on it. Prints each arm's real tokens, steps, training wall time, real tokens/s, final held-out loss and bits per byte, then
`fidelity=X` ((b)'s final held-out loss / (a)'s; `fidelity_bf16=` for (b2)) and `time_ratio=Y` ((a)'s training wall time / (c)'s). Writes
`curves.json` (every point of every run: tokens, seconds, held-out loss) and `curves.png` to `--out`, and keeps (c)'s
final checkpoint there as `fast.ckpt`.
"""

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import CONFIGS, LLAMA_TOKENIZER, TINYSTORIES, load_config, local, machine
from lightning.pytorch import Callback

from tinystories.attention import ATTENTION
from tinystories.cli import cli_main
from tinystories.data import collate, tokenize_batch
from tinystories.model import TinyStoriesLM
from tinystories.precision import cpu_class, pick
from tinystories.sources import load_split
from tinystories.tokenizer import load_tokenizer, token_bytes
from throughput import SEED, recipe_model  # the recipe's model at seed 3407: every arm's initial weights

RECIPE = CONFIGS / "tinystories-20m.yaml"
FAST = CONFIGS / "tinystories-20m-fast.yaml"
# The fast config sized for a 2-core CPU, as benchmarks/throughput.py sizes it: a CPU-sized batch and learning rates
# for it, no torch.compile; the config's own precision (null: picked for this CPU).
FAST_CPU = [
    "--data.batch_size", "8", "--data.num_workers", "0",
    "--model.compile", "false", "--model.optimization.muon_learning_rate", "0.006",
    "--model.optimization.learning_rate", "0.003", "--model.optimization.warmup_steps", "10",
]
# What the benchmark turns off in both CLI arms, as the recipe's Trainer saves and validates nothing while it trains:
# Lightning's validation, checkpoints, sample stories and progress bar.
QUIET = [
    "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
    "--disable_callbacks", "[checkpoint, last_checkpoint, samples, validate_at_end]",
]

warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


class HeldOut:
    """The held-out stories, tokenized as validation tokenizes them, longest first (fewer pads per batch)."""

    def __init__(self, valid, tokenizer, max_length: int, batch_size: int = 16):
        sizes = np.asarray(token_bytes(tokenizer), dtype=np.int64)
        rows = tokenize_batch({"text": list(valid["text"])}, tokenizer, max_length=max_length, packing=False,
                              sizes=sizes)
        samples = sorted(({"input_ids": ids, "num_bytes": b} for ids, b in zip(rows["input_ids"], rows["num_bytes"])),
                         key=lambda s: -len(s["input_ids"]))
        self.batches = [collate(samples[i:i + batch_size], tokenizer.pad_token_id)
                        for i in range(0, len(samples), batch_size)]
        self.stories = len(samples)

    @torch.no_grad()
    def loss(self, lm: TinyStoriesLM) -> tuple[float, float]:
        """Nats per real token and bits per byte of `lm` (fp32, the project's attention, as validation runs)."""
        training, attention = lm.training, lm.model.config._attn_implementation
        lm.eval()
        lm.model.set_attn_implementation(ATTENTION)
        nats = tokens = num_bytes = 0.0
        with torch.autocast("cpu", enabled=False):
            for batch in self.batches:
                batch_nats, count = lm.nats(batch)
                nats, tokens, num_bytes = nats + float(batch_nats), tokens + int(count), num_bytes + int(
                    batch["num_bytes"].sum())
        lm.model.set_attn_implementation(attention)
        lm.train(training)
        return nats / tokens, nats / math.log(2) / num_bytes


class Clock:
    """Training wall time with pauses for held-out measurements, and the curve they make."""

    def __init__(self, held_out: HeldOut, lm: TinyStoriesLM, total_steps: int, points: int):
        self.held_out, self.lm = held_out, lm
        self.at = {round(k * total_steps / points) for k in range(1, points + 1)}
        self.start = self.paused = None
        self.cpu_start = self.cpu_paused = 0.0  # CPU seconds of this process: a check on wall time when others run
        self.tokens, self.steps, self.curve = 0, 0, []

    def begin(self) -> None:
        self.measure()  # step 0: the initial weights, before the clock starts
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def step(self, real_tokens: int) -> None:
        self.steps, self.tokens = self.steps + 1, self.tokens + real_tokens
        if self.steps in self.at:
            self.measure()

    def seconds(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start - self.paused

    def cpu_seconds(self) -> float:
        return 0.0 if self.start is None else time.process_time() - self.cpu_start - self.cpu_paused

    def measure(self) -> None:
        seconds, cpu, began, cpu_began = self.seconds(), self.cpu_seconds(), time.perf_counter(), time.process_time()
        loss, bpb = self.held_out.loss(self.lm)
        self.curve.append({"step": self.steps, "tokens": self.tokens, "seconds": seconds, "cpu_seconds": cpu,
                           "load_average": os.getloadavg()[0], "loss": loss, "bpb": bpb})
        print(f"    step {self.steps:>6}  {self.tokens:>10,} tokens  {seconds:8.1f} s  held-out loss {loss:.4f}",
              flush=True)
        if self.start is not None:
            self.cpu_paused += time.process_time() - cpu_began
        self.paused = (self.paused or 0.0) + (time.perf_counter() - began if self.start is not None else 0.0)

    def result(self, name: str, **extra) -> dict:
        last = self.curve[-1]
        assert last["step"] == self.steps, "the last step was not measured"
        loads = [p["load_average"] for p in self.curve[1:]]
        return {"name": name, "steps": self.steps, "tokens": self.tokens, "seconds": last["seconds"],
                "cpu_seconds": last["cpu_seconds"], "tok_s": self.tokens / max(last["seconds"], 1e-9),
                "loss": last["loss"], "bpb": last["bpb"], "load_average": sum(loads) / max(len(loads), 1),
                "curve": self.curve, **extra}


def run_recipe(args, recipe: dict, train, tokenizer, held_out: HeldOut, out: Path) -> dict:
    """(a): the recipe's own code, a plain `Trainer` with the language-modeling collator on left-padded stories."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    keep = recipe["data"]["max_length"] - 1
    tokenized = train.map(lambda b: {"input_ids": [ids[-keep:] + [tokenizer.eos_token_id] for ids in
                                                   tokenizer(b["text"], add_special_tokens=False)["input_ids"]]},
                          batched=True, remove_columns=train.column_names)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # pads left: the tokenizer's padding side
    lm = recipe_model(recipe, tokenizer)
    lm.model.set_attn_implementation("sdpa")  # transformers' default, as the recipe's `from_config` gives
    clock, pending = None, []

    def counting(features):
        batch = collator(features)
        pending.append(int(batch["attention_mask"].sum()))
        return batch

    class Measure(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kwargs):
            nonlocal clock
            clock = Clock(held_out, lm, state.max_steps, args.points)
            clock.begin()

        def on_step_end(self, targs, state, control, **kwargs):
            clock.step(pending.pop(0))

    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=recipe["data"]["batch_size"],
                              learning_rate=1e-4, lr_scheduler_type="cosine", num_train_epochs=2, seed=SEED,
                              save_strategy="no", report_to="none", logging_steps=10**9, use_cpu=True,
                              disable_tqdm=True, dataloader_num_workers=0, max_steps=args.max_steps or -1)
    trainer = Trainer(model=lm.model, args=targs, train_dataset=tokenized, data_collator=counting,
                      callbacks=[Measure()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.result("(a) recipe: transformers.Trainer")


class MeasureFit(Callback):
    def __init__(self, held_out: HeldOut, points: int):
        self.held_out, self.points, self.clock = held_out, points, None

    def on_train_start(self, trainer, pl_module):
        self.clock = Clock(self.held_out, pl_module, trainer.estimated_stepping_batches, self.points)
        self.clock.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.step(int(batch["attention_mask"].sum()))


def run_fit(args, config: Path, options: list[str], recipe: dict, tokenizer, held_out: HeldOut, out: Path,
            name: str, keep: Path = None) -> dict:
    """(b) or (c): `python -m tinystories fit --config CONFIG OPTIONS` in this process, from the recipe's weights."""
    cli = cli_main(["--config", str(config), "--data.dataset", args.data, "--data.tokenizer", args.tokenizer,
                    "--data.train_split", f"train[:{args.stories}]", "--data.val_split", "validation[:8]",
                    "--trainer.default_root_dir", str(out), *QUIET, *options], run=False)
    cli.model.model.load_state_dict(recipe_model(recipe, tokenizer).model.state_dict())
    measure = MeasureFit(held_out, args.points)
    cli.trainer.callbacks.append(measure)
    cli.trainer.fit(cli.model, cli.datamodule)
    if keep is not None:
        cli.trainer.save_checkpoint(keep)
    return measure.clock.result(name)


def run_port(args, recipe, tokenizer, held_out, out: Path, precision: str = "32-true") -> dict:
    """(b) in (a)'s fp32; (b2) as shipped, at the precision null picks here."""
    options = ["--data.num_workers", "0"] + (["--trainer.precision", "32-true"] if precision == "32-true" else [])
    if args.max_steps:
        options += ["--trainer.max_steps", str(args.max_steps)]
    name = "(b) port" if precision == "32-true" else "(b2) port as shipped"
    return run_fit(args, RECIPE, options, recipe, tokenizer, held_out, out,
                   f"{name}: configs/tinystories-20m.yaml, {precision}")


def run_fast(args, recipe, tokenizer, held_out, out: Path, budget: int, keep: Path) -> dict:
    fast = load_config(FAST)
    block = fast["data"]["max_length"] * int(FAST_CPU[FAST_CPU.index("--data.batch_size") + 1])
    steps = max(args.max_steps or 0, math.ceil(budget / block))
    options = [*FAST_CPU, "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps)]
    return run_fit(args, FAST, options, recipe, tokenizer, held_out, out,
                   f"(c) fast: configs/tinystories-20m-fast.yaml, budget {steps * block:,} tokens", keep)


def search_fast(args, recipe, tokenizer, held_out, out: Path, target: float, recipe_tokens: int) -> tuple[dict, list]:
    """The shortest budget (of at most `args.tries` complete runs) whose run ends at or below `target`."""
    runs, passed, failed = [], [], []
    budget = int(args.first_budget * recipe_tokens)
    for i in range(args.tries):
        print(f"\n(c) try {i + 1}: a budget of {budget:,} tokens", flush=True)
        run = run_fast(args, recipe, tokenizer, held_out, out / f"c{i}", budget, out / f"fast-{i}.ckpt")
        run["passed"] = run["loss"] <= target
        runs.append(run)
        (passed if run["passed"] else failed).append(budget)
        below = [b for b in failed if passed and b < min(passed)]
        if below:  # between the longest failing budget and the shortest passing one
            low, high = max(below), min(passed)
            if high / low < 1.15:
                break
            budget = int(math.sqrt(low * high))
        elif passed:
            budget = int(min(passed) / args.step)
        else:
            budget = int(max(failed) * args.step)
    winners = [r for r in runs if r["passed"]]
    best = min(winners, key=lambda r: r["seconds"]) if winners else min(runs, key=lambda r: r["loss"])
    kept = runs.index(best)
    os.replace(out / f"fast-{kept}.ckpt", out / "fast.ckpt")
    for i in range(len(runs)):
        (out / f"fast-{i}.ckpt").unlink(missing_ok=True)
    return best, runs


def report(run: dict) -> str:
    return (f"{run['name']}\n    {run['tokens']:,} real tokens, {run['steps']:,} steps, {run['seconds']:.1f} s "
            f"training wall time ({run['cpu_seconds']:.1f} CPU s, load average {run['load_average']:.2f}), "
            f"{run['tok_s']:,.0f} real tokens/s, final held-out loss {run['loss']:.4f} ({run['bpb']:.4f} bits per byte)")


def plot(runs: dict, target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for (label, run), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:purple", "tab:green")):
        for ax, key, scale in ((axes[0], "seconds", 1 / 60), (axes[1], "tokens", 1e-6)):
            ax.plot([p[key] * scale for p in run["curve"]], [p["loss"] for p in run["curve"]], "o-", ms=3,
                    color=color, label=f"{label} ({run['tok_s']:,.0f} tokens/s)")
    for ax, xlabel in zip(axes, ("training wall time (minutes)", "real tokens trained on (millions)")):
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"(a)'s final loss {target:.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out loss (nats per token)")
        ax.set_ylim(target - 0.6, target + 2.4)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=7711, help="training stories (the first N of the train split)")
    parser.add_argument("--heldout", type=int, default=300, help="held-out stories (the first N of validation)")
    parser.add_argument("--out", type=Path, default=None, help="where curves.json, curves.png, fast.ckpt go "
                                                                 "(default: recipe-out/ in the current folder)")
    parser.add_argument("--data", default=str(TINYSTORIES))
    parser.add_argument("--tokenizer", default=str(LLAMA_TOKENIZER))
    parser.add_argument("--points", type=int, default=10, help="held-out measurements per run after step 0")
    parser.add_argument("--tries", type=int, default=3, help="complete runs of (c) to search its budget with")
    parser.add_argument("--first_budget", type=float, default=0.2,
                        help="(c)'s first budget, as a fraction of (a)'s real tokens")
    parser.add_argument("--step", type=float, default=1.5, help="budget factor between tries until one passes")
    parser.add_argument("--max_steps", type=int, default=0, help="cap (a)'s and (b)'s steps (0: the 2 epochs)")
    parser.add_argument("--smoke", action="store_true", help="every arm for a few steps on a handful of stories")
    args = parser.parse_args()
    if args.smoke:
        args.stories, args.heldout, args.points, args.tries, args.max_steps = 24, 8, 2, 2, 4
    out = args.out or Path("recipe-out")
    for path in (args.data, args.tokenizer):
        local(path)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: --out {out} is not empty; give a new folder (nothing in it is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(machine(), flush=True)
    resolved = pick("cpu").precision
    recipe = load_config(RECIPE)
    tokenizer = load_tokenizer(args.tokenizer)
    train = load_split(args.data, f"train[:{args.stories}]")
    held_out = HeldOut(load_split(args.data, f"validation[:{args.heldout}]"), tokenizer, recipe["data"]["max_length"])
    print(f"{len(train):,} training stories, {held_out.stories} held-out stories; torch threads: "
          f"{torch.get_num_threads()}; {os.cpu_count()} CPUs", flush=True)
    results = {"stories": len(train), "heldout": held_out.stories, "threads": torch.get_num_threads(), "runs": {}}

    def save():
        (out / "curves.json").write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TINYSTORIES_CACHE"] = str(Path(tmp) / "cache")  # a cold cache, never ../shared
        print("\n(a) the recipe", flush=True)
        a = results["runs"]["a"] = run_recipe(args, recipe, train, tokenizer, held_out, Path(tmp) / "a")
        save()
        print("\n(b) the port", flush=True)
        b = results["runs"]["b"] = run_port(args, recipe, tokenizer, held_out, Path(tmp) / "b")
        save()
        if resolved != "32-true":
            print(f"\n(b2) the port as shipped, {resolved}", flush=True)
            results["runs"]["b2"] = run_port(args, recipe, tokenizer, held_out, Path(tmp) / "b2", resolved)
            save()
        c, tries = search_fast(args, recipe, tokenizer, held_out, Path(tmp), a["loss"], a["tokens"])
        results["runs"]["c"], results["fast_tries"] = c, tries
        os.replace(Path(tmp) / "fast.ckpt", out / "fast.ckpt")
    results["fidelity"], results["time_ratio"] = b["loss"] / a["loss"], a["seconds"] / c["seconds"]
    b2 = results["runs"].get("b2")
    if b2:
        results["fidelity_bf16"] = b2["loss"] / a["loss"]
    results["cpu_time_ratio"] = a["cpu_seconds"] / c["cpu_seconds"]
    save()
    print()
    for run in (a, b, b2, c):
        if run:
            print(report(run))
    print("(c) budgets tried: " + ", ".join(f"{r['tokens']:,} tokens -> {r['loss']:.4f} in {r['seconds']:.0f} s"
                                            for r in tries))
    if not c.get("passed"):
        print(f"(c) did not reach (a)'s final loss {a['loss']:.4f} in {len(tries)} tries: its best run is reported")
    plot({"(a) recipe": a, "(b) port": b, **({"(b2) port, bf16-mixed": b2} if b2 else {}), "(c) fast": c},
         a["loss"], out / "curves.png",
         f"19.5M LLaMA, {len(train):,} TinyStories stories, held-out loss on {held_out.stories} stories; "
         f"{os.cpu_count()}-core CPU ({cpu_class()}), {torch.get_num_threads()} threads")
    print(f"wrote {out / 'curves.json'}, {out / 'curves.png'}, {out / 'fast.ckpt'}")
    print(f"fidelity={results['fidelity']:.4f}")
    if b2:
        print(f"fidelity_bf16={results['fidelity_bf16']:.4f}")
    print(f"time_ratio={results['time_ratio']:.2f}")
    print(f"cpu_time_ratio={results['cpu_time_ratio']:.2f}")


if __name__ == "__main__":
    main()
