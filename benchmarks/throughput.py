"""Our `fit` against the reference recipe (a plain Hugging Face `Trainer`), same model, stories and machine, one run.

    python benchmarks/throughput.py                      # ../shared/data: real stories, the LLaMA-2 tokenizer
    python benchmarks/throughput.py --baseline_steps 40  # a quick look

(a) The reference recipe, written here as its users write it: the 19.5M LLaMA of configs/tinystories-20m.yaml,
stories tokenized with truncation at 2048, `DataCollatorForLanguageModeling(mlm=False)` with left padding,
batch 4, AdamW at 1e-4 with a cosine schedule, fp32, the `Trainer`'s defaults otherwise.
(b) `python -m tinystories fit --config configs/tinystories-20m-fast.yaml` with the CPU-sized settings below
(`--ours`), run through the project's CLI in this process, for the same number of real (non-pad) tokens.

Both start from the same initial weights (seed 3407, Kaiming init). Throughput is real tokens over the wall time from
the end of the warm-up steps to the end of the last step (data loading and optimizer included). The loss each
reached is the mean training loss over the last 10% of its tokens, and the loss of the final weights on the same
held-out stories (left-padded, fp32, nats per token). The last line reads `ratio=X.XX`.
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinystories.cli import cli_main  # noqa: E402
from tinystories.data import collate, tokenize_batch  # noqa: E402
from tinystories.model import TinyStoriesLM  # noqa: E402
from tinystories.sources import load_split  # noqa: E402
from tinystories.tokenizer import load_tokenizer  # noqa: E402

SEED = 3407
WARMUP = 3  # steps left out of the timing: allocator and oneDNN warm-up
FAST_CONFIG = ROOT / "configs" / "tinystories-20m-fast.yaml"  # packing in blocks of 512, bf16, Muon
# configs/tinystories-20m-fast.yaml sized for this 2-core CPU: a CPU-sized batch and learning rates for it, no
# torch.compile (it did not pay on this CPU: README, "Performance").
OURS = [
    "--trainer.precision", "bf16-mixed", "--data.batch_size", "8", "--data.num_workers", "0",
    "--model.compile", "false", "--model.muon_learning_rate", "0.006", "--model.learning_rate", "0.003",
    "--model.warmup_steps", "10",
]


def stories_and_tokenizer(data: str, tokenizer: str, num_valid: int):
    tok = load_tokenizer(tokenizer)
    return load_split(data, "train"), load_split(data, f"validation[:{num_valid}]"), tok


def window_loss(losses: list[float], tokens: list[int], fraction: float = 0.1) -> float:
    """Token-weighted mean loss over the last `fraction` of the tokens."""
    total, seen, acc, weight = sum(tokens), 0, 0.0, 0
    for loss, n in zip(reversed(losses), reversed(tokens)):
        acc, weight, seen = acc + loss * n, weight + n, seen + n
        if seen >= fraction * total:
            break
    return acc / weight


@torch.no_grad()
def held_out_loss(lm: TinyStoriesLM, valid, tokenizer, batch_size: int = 16) -> float:
    """Nats per token of `lm` on the held-out stories, one left-padded story per row, fp32: `lm.nats`, as validation."""
    lm.eval()
    ids = tokenize_batch({"text": list(valid["text"])}, tokenizer, max_length=2048, packing=False,
                         sizes=np.zeros(len(tokenizer), np.int64))  # bytes are not needed here
    nats = count = 0.0
    for i in range(0, len(ids["input_ids"]), batch_size):
        rows = [{"input_ids": x, "num_bytes": 0} for x in ids["input_ids"][i:i + batch_size]]
        batch_nats, batch_count = lm.nats(collate(rows, tokenizer.pad_token_id))
        nats, count = nats + float(batch_nats), count + int(batch_count)
    lm.train()
    return nats / count


def initial_model(vocab_size: int, tokenizer) -> TinyStoriesLM:
    torch.manual_seed(SEED)
    return TinyStoriesLM(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def run_baseline(train, tokenizer, steps: int, out: Path) -> dict:
    """The reference recipe: a plain `Trainer` with the language-modeling collator on left-padded stories."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    tokenized = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=2048), batched=True,
                          remove_columns=["text"])
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

    lm = initial_model(len(tokenizer), tokenizer)
    model = lm.model
    model.set_attn_implementation("sdpa")  # transformers' default, as the recipe's from_config gives (fp32 either way)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-4,
                             lr_scheduler_type="cosine", weight_decay=0.0, max_steps=steps, logging_steps=1,
                             save_strategy="no", report_to="none", seed=SEED, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, data_collator=counting_collator,
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


def run_ours(args, tokens: int, out: Path) -> dict:
    sys.argv[1:] = []  # the CLI reads only the list below
    cli = cli_main([
        "--config", str(FAST_CONFIG), "--data.dataset", args.data,
        "--data.tokenizer", args.tokenizer, "--data.train_split", "train", "--data.val_split", "validation[:8]",
        "--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--samples.prompts", "[]", *args.ours], run=False)
    data = cli.datamodule.hparams
    assert data.packing, "the equal-token count below assumes packed blocks, which are all real tokens"
    cli.trainer.fit_loop.epoch_loop.max_steps = max(WARMUP + 2, math.ceil(tokens / (data.max_length * data.batch_size)))
    # The same initial weights as the baseline: TinyStoriesLM seeds nothing itself, the CLI seeded 3407 before this.
    cli.model.model.load_state_dict(initial_model(cli.model.hparams.vocab_size, cli.datamodule.tokenizer).model
                                    .state_dict())
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinystories"))
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "data" / "llama2-tokenizer"))
    parser.add_argument("--baseline_steps", type=int, default=300, help="steps of the recipe (batch 4)")
    parser.add_argument("--num_valid", type=int, default=200, help="held-out stories scored at the end")
    parser.add_argument("--ours", nargs=argparse.REMAINDER, default=OURS,
                        help="options for our fit (default: the fast settings); must come last")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch threads: {torch.get_num_threads()}; ours: {' '.join(args.ours)}")
    train, valid, tokenizer = stories_and_tokenizer(args.data, args.tokenizer, args.num_valid)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TINYSTORIES_CACHE"] = str(Path(tmp) / "cache")  # cold cache, and never ../shared
        base = run_baseline(train, tokenizer, args.baseline_steps + WARMUP, Path(tmp) / "hf")
        ours = run_ours(args, base["tokens"], Path(tmp) / "ours")
    for run in (base, ours):
        run["held_out"] = held_out_loss(run["model"], valid, tokenizer)
        print(f"{run['name']:>18}: {run['steps']} steps, {run['tokens']:,} real tokens, {run['ms_step']:.0f} ms/step, "
              f"{run['tok_s']:,.0f} real tokens/s, pad fraction {run['pad']:.1%}, train loss (last 10% of tokens) "
              f"{run['loss']:.4f}, held-out loss ({len(valid)} stories) {run['held_out']:.4f}")
    print(f"loss after equal tokens, ours / recipe: train {ours['loss'] / base['loss']:.4f}, "
          f"held-out {ours['held_out'] / base['held_out']:.4f}")
    print(f"ratio={ours['tok_s'] / base['tok_s']:.2f}")


if __name__ == "__main__":
    main()
