"""Our `fit` against the reference recipe (a plain Hugging Face `Trainer`), same model, stories and machine, one run.

    python benchmarks/throughput.py                                     # ../shared/data: ~6 minutes on 2 cores
    python benchmarks/throughput.py --baseline_steps 40                 # a quicker look
    python benchmarks/throughput.py --baseline_steps 2 --num_valid 8    # a check that it runs

(a) The reference recipe, written here as its users write it, with configs/tinystories-20m.yaml's settings: its
19.5M LLaMA, stories tokenized with truncation at `data.max_length`, `DataCollatorForLanguageModeling(mlm=False)`
with left padding, its batch size, AdamW with its learning rate, betas, weight decay and schedule, fp32, the
`Trainer`'s defaults otherwise.
(b) `python -m tinystories fit --config configs/tinystories-20m-fast.yaml` with the CPU-sized settings below
(`--ours`), run through the project's CLI in this process, for the same number of real (non-pad) tokens, at the
precision `trainer.precision: null` picks on this CPU (the first line prints the CPU class and that pick).

Both start from the same initial weights (the recipe's model at seed 3407). Throughput is real tokens over the wall
time from the end of the warm-up steps to the end of the last step (data loading and optimizer included). The loss
each reached is the mean training loss over the last 10% of its tokens, and the loss of the final weights on the
same held-out stories (left-padded, fp32, nats per token). The last line reads `ratio=X.XX` (ours / recipe).
"""

import argparse
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import CONFIGS, LLAMA_TOKENIZER, TINYSTORIES, architecture, load_config, local, machine, optimization
from lightning.pytorch import Callback

from tinystories.cli import cli_main
from tinystories.data import collate, tokenize_batch
from tinystories.model import TinyStoriesLM
from tinystories.sources import load_split
from tinystories.tokenizer import load_tokenizer

SEED = 3407
WARMUP = 3  # steps left out of the timing: allocator and oneDNN warm-up
RECIPE = CONFIGS / "tinystories-20m.yaml"
FAST = CONFIGS / "tinystories-20m-fast.yaml"  # packing in blocks of 512, bf16, Muon
# The fast config sized for a 2-core CPU: a CPU-sized batch and learning rates for it, no torch.compile; its
# precision is the config's own (null: picked for this CPU).
OURS = [
    "--data.batch_size", "8", "--data.num_workers", "0",
    "--model.compile", "false", "--model.optimization.muon_learning_rate", "0.006",
    "--model.optimization.learning_rate", "0.003", "--model.optimization.warmup_steps", "10",
]

# cli_main is given its arguments while this script has command-line arguments of its own, as meant.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

def window_loss(losses: list[float], tokens: list[int], fraction: float = 0.1) -> float:
    """Token-weighted mean loss over the last `fraction` of the tokens."""
    total, seen, acc, weight = sum(tokens), 0, 0.0, 0
    for loss, n in zip(reversed(losses), reversed(tokens)):
        acc, weight, seen = acc + loss * n, weight + n, seen + n
        if seen >= fraction * total:
            break
    return acc / weight


@torch.no_grad()
def held_out_loss(lm: TinyStoriesLM, valid, tokenizer, max_length: int, batch_size: int = 16) -> float:
    """Nats per token of `lm` on the held-out stories, one left-padded story per row, fp32: `lm.nats`, as validation."""
    lm.eval()
    ids = tokenize_batch({"text": list(valid["text"])}, tokenizer, max_length=max_length, packing=False,
                         sizes=np.zeros(len(tokenizer), np.int64))  # bytes are not needed here
    nats = count = 0.0
    for i in range(0, len(ids["input_ids"]), batch_size):
        rows = [{"input_ids": x, "num_bytes": 0} for x in ids["input_ids"][i:i + batch_size]]
        batch_nats, batch_count = lm.nats(collate(rows, tokenizer.pad_token_id))
        nats, count = nats + float(batch_nats), count + int(batch_count)
    lm.train()
    return nats / count


def recipe_model(recipe: dict, tokenizer) -> TinyStoriesLM:
    torch.manual_seed(SEED)
    arch = architecture(recipe, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return TinyStoriesLM(arch, optimization(recipe))


def run_baseline(recipe: dict, train, tokenizer, steps: int, out: Path) -> dict:
    """The reference recipe: a plain `Trainer` with the language-modeling collator on left-padded stories."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    data, opt = recipe["data"], optimization(recipe)
    tokenized = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=data["max_length"]),
                          batched=True, remove_columns=["text"])
    inner = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    seen = []  # (real tokens, padded tokens) per batch, in step order (num_workers=0: collated just before use)

    def counting_collator(features):
        batch = inner(features)
        seen.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    marks, losses = [], []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    lm = recipe_model(recipe, tokenizer)
    lm.model.set_attn_implementation("sdpa")  # transformers' default, as the recipe's from_config gives
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=data["batch_size"],
                             learning_rate=opt.learning_rate, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1],
                             weight_decay=opt.weight_decay, lr_scheduler_type=opt.lr_schedule,
                             warmup_steps=opt.warmup_steps, max_steps=steps, logging_steps=1, save_strategy="no",
                             report_to="none", seed=SEED, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=lm.model, args=args, train_dataset=tokenized, data_collator=counting_collator,
                      callbacks=[Marks()])
    trainer.remove_callback(PrinterCallback)  # a dict per step on stdout
    trainer.train()
    return summary("HF Trainer recipe", lm, marks, seen, losses)


class Record(Callback):
    """Wall-clock marks, real tokens and the training loss of every step of our `fit`."""

    def __init__(self):
        self.marks, self.seen, self.losses = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        mask = batch["attention_mask"]
        self.seen.append((int(mask.sum()), mask.numel()))
        self.losses.append(float(outputs["loss"]))  # a host sync the real run does not make: it only slows us
        self.marks.append(time.perf_counter())


def run_ours(args, recipe: dict, tokens: int, out: Path) -> dict:
    cli = cli_main([
        "--config", str(FAST), "--data.dataset", args.data, "--data.tokenizer", args.tokenizer,
        "--data.train_split", "train", "--data.val_split", "validation[:8]",
        "--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--samples.prompts", "[]", *args.ours], run=False)
    data = cli.datamodule.hparams
    assert data.packing, "the equal-token count below assumes packed blocks, which are all real tokens"
    cli.trainer.fit_loop.epoch_loop.max_steps = max(WARMUP + 2, math.ceil(tokens / (data.max_length * data.batch_size)))
    # The same initial weights as the recipe's model.
    cli.model.model.load_state_dict(recipe_model(recipe, cli.datamodule.tokenizer).model.state_dict())
    record = Record()
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, cli.datamodule)
    return summary("tinystories fit", cli.model, record.marks, record.seen, record.losses)


def summary(name: str, model, marks, seen, losses) -> dict:
    timed = seen[WARMUP:len(marks)]
    real = sum(r for r, _ in timed)
    padded = sum(p for _, p in timed)
    elapsed = marks[-1] - marks[WARMUP - 1]
    tokens = [r for r, _ in seen[:len(losses)]]
    return {"name": name, "model": model, "steps": len(marks), "tokens": sum(tokens), "tok_s": real / elapsed,
            "pad": 1 - real / padded, "loss": window_loss(losses, tokens), "ms_step": 1e3 * elapsed / len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(TINYSTORIES))
    parser.add_argument("--tokenizer", default=str(LLAMA_TOKENIZER))
    parser.add_argument("--baseline_steps", type=int, default=300, help="timed steps of the recipe")
    parser.add_argument("--num_valid", type=int, default=200, help="held-out stories scored at the end")
    parser.add_argument("--ours", nargs=argparse.REMAINDER, default=OURS,
                        help="options for our fit (default: the fast settings); must come last")
    args = parser.parse_args()
    for path in (args.data, args.tokenizer):
        local(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recipe = load_config(RECIPE)
    print(machine(), flush=True)
    print(f"torch threads: {torch.get_num_threads()}; ours: {' '.join(args.ours)}")
    tokenizer = load_tokenizer(args.tokenizer)
    train, valid = load_split(args.data, "train"), load_split(args.data, f"validation[:{args.num_valid}]")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TINYSTORIES_CACHE"] = str(Path(tmp) / "cache")  # cold cache, and never ../shared
        base = run_baseline(recipe, train, tokenizer, args.baseline_steps + WARMUP, Path(tmp) / "hf")
        ours = run_ours(args, recipe, base["tokens"], Path(tmp) / "ours")
    for run in (base, ours):
        run["held_out"] = held_out_loss(run["model"], valid, tokenizer, recipe["data"]["max_length"])
        print(f"{run['name']:>18}: {run['steps']} steps, {run['tokens']:,} real tokens, {run['ms_step']:.0f} ms/step, "
              f"{run['tok_s']:,.0f} real tokens/s, pad fraction {run['pad']:.1%}, train loss (last 10% of tokens) "
              f"{run['loss']:.4f}, held-out loss ({len(valid)} stories) {run['held_out']:.4f}")
    print(f"loss after equal tokens, ours / recipe: train {ours['loss'] / base['loss']:.4f}, "
          f"held-out {ours['held_out'] / base['held_out']:.4f}")
    print(f"ratio={ours['tok_s'] / base['tok_s']:.2f}")


if __name__ == "__main__":
    main()
