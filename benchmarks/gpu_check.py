"""One command for the first GPU: the 19.5M model trained the fast way and the recipe's way, then generate and export.

    python benchmarks/gpu_check.py                            # one GPU, ../shared/data: a few minutes, at most 8
    python benchmarks/gpu_check.py --peak_flops 989e12        # MFU against a peak of your choice
    python benchmarks/gpu_check.py --smoke --out_dir /tmp/gc  # tiny, on a CPU, in under a minute: the same code path

First the machine: device name and compute capability, torch, CUDA and cuDNN versions, the precision that
`trainer.precision: null` picks there and why, and a line `attention:` from a probe: (a)'s model (`TinyStoriesLM`, eager)
takes a forward and backward pass in that precision's dtype (bf16 from sm80 on) over left-padded batches made by
`tinystories.data.collate`, at sequence lengths 448 and 512, rows from full to one real token; the line says whether
any output (every position's last hidden state, pads included), the loss or any gradient is NaN or infinite.
Then each GPU-facing config as shipped (its precision, optimizer, clipping, compile and callbacks; only the data,
the step count, the validation and logging cadence and the run folder are set): (b) configs/tinystories-20m.yaml,
the reference recipe's settings (batch 4 left-padded stories, fused AdamW 1e-4 clipped at 1.0, no compile), for
`--recipe_steps`, first, as it starts in seconds; then (a) configs/tinystories-20m-fast.yaml (packed 512-token
blocks, batch 128, Muon, compiled layers) for `--steps` steps. Both run through the real `fit`
(`tinystories.cli.cli_main`) on `--dataset` (default the real stories in ../shared/data) under `--out_dir`. Each
run's figures are printed as soon as it ends; a run that fails prints its error and the check goes on, then exits
non-zero. The figures come from the run's own TensorBoard events (the `throughput/` metrics of the project's
Throughput callback) and its trainer:
- real (non-pad) tokens/s: the median of the logging windows (`--log_every` steps) after the first;
- MFU, against `--peak_flops`, else the GPU's dense peak at the training precision (`tinystories.gpu.DENSE_PEAKS`:
  H200, H100, A100, L4, A10, T4, RTX 4090, ...), else Lightning's table, else "unknown"; the peak used is printed;
- the first window's time against a steady window's: compiling (a) and start-up;
- peak memory: `torch.cuda.max_memory_allocated` on a GPU, the process's max RSS on a CPU; on a GPU also what is
  still allocated when the run starts (after (a): what (a) left on the GPU);
- the final val/bpb;
then `ratio=` (tokens/s of (a) / (b)). Last, 2 stories from (a)'s last.ckpt (`tinystories.checkpoint.load` and
`sample_stories`), and (a) exported (`tinystories.export.main`) and reloaded with `AutoModelForCausalLM`.
`--smoke`: a hidden-32 model, 300 synthetic stories with a 512-token BPE trained on them, a few steps, CPU (at the
precision `null` picks on it), no compile.
"""

import argparse
import gc
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import (CONFIGS, LLAMA_TOKENIZER, TINYSTORIES, architecture, gib, load_config, local, peak_memory,
                    reset_peak_memory, scalars)

from tinystories import checkpoint, export, gpu
from tinystories.cli import cli_main
from tinystories.precision import pick
from tinystories.data import collate
from tinystories.generate import sample_stories
from tinystories.model import TinyStoriesLM

PROMPTS = ["Once upon a time", "Lily and her dog"]
PROBE_LENGTHS = (448, 512)
SMOKE = [
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "2", "--model.compile", "false",
    "--data.max_length", "128", "--data.num_workers", "0", "--data.synthetic_stories", "300",
    "--data.tokenizer_vocab_size", "512", "--samples.max_new_tokens", "16",
    "--model.architecture.hidden_size", "32", "--model.architecture.num_hidden_layers", "2",
    "--model.architecture.num_attention_heads", "4", "--model.architecture.num_key_value_heads", "2",
    "--model.architecture.max_position_embeddings", "256",
]
RUNS = {  # name: (config, options of its own under --smoke); the recipe first: it starts in seconds
    "(b) recipe": (CONFIGS / "tinystories-20m.yaml", []),
    "(a) fast": (CONFIGS / "tinystories-20m-fast.yaml", ["--data.batch_size", "8"]),
}

# cli_main is given its arguments while this script has command-line arguments of its own, as meant.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

def peak_flops(args, device: torch.device) -> tuple[float | None, str]:
    if args.peak_flops:
        return args.peak_flops, "--peak_flops"
    return gpu.peak_flops(device, pick(device.type).precision)


def describe(device: torch.device) -> str:
    """What runs the check: device, compute capability, library versions, and the precision `null` picks here."""
    if device.type == "cuda":
        name, cap = torch.cuda.get_device_name(device), "%d.%d" % torch.cuda.get_device_capability(device)
    else:
        name, cap = "CPU", "none"
    chosen = pick(device.type)
    return (f"device: {name}; compute capability {cap}; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'none'}, cuDNN {torch.backends.cudnn.version() or 'none'}\n"
            f"precision: {chosen.precision} ({chosen.reason}; what trainer.precision: null picks here)")


def probe_model(smoke: bool, device: torch.device) -> TinyStoriesLM:
    """(a)'s model: the fast config's shape (--smoke: its hidden-32 options) and LLaMA-2's 32,000 tokens (512)."""
    pairs = dict(zip(SMOKE[::2], SMOKE[1::2]))
    shape = {k.removeprefix("--model.architecture."): int(v) for k, v in pairs.items()
             if smoke and k.startswith("--model.architecture.")}
    torch.manual_seed(0)
    arch = architecture(load_config(RUNS["(a) fast"][0]), vocab_size=512 if smoke else 32000, pad_token_id=0, **shape)
    return TinyStoriesLM(arch).to(device).train()


def attention_probe(lm: TinyStoriesLM, device: torch.device, dtype: torch.dtype) -> str:
    """The `attention:` line: a NaN or infinity in outputs, loss or gradients of left-padded passes, at each length."""
    hidden = {}
    hook = lm.model.model.register_forward_hook(lambda module, args, out: hidden.update(out=out.last_hidden_state))
    found, what = [], str(dtype).removeprefix("torch.")
    try:
        for length in PROBE_LENGTHS:
            lengths = (length, length - 1, length - 64, length // 2, 17, 1)  # every row but the first left-padded
            ids = torch.randint(3, lm.architecture.vocab_size, (len(lengths), length),
                                generator=torch.Generator().manual_seed(length))
            samples = [{"input_ids": row[:n].tolist(), "num_bytes": n} for row, n in zip(ids, lengths)]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in collate(samples, lm.architecture.pad_token_id).items()}
            lm.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                nats, count = lm.nats(batch)
            (nats / count).backward()
            grads = [p.grad for p in lm.parameters() if p.grad is not None]
            bad = [name for name, tensors in (("outputs", [hidden["out"]]), ("loss", [nats]), ("gradients", grads))
                   if not all(bool(torch.isfinite(t).all()) for t in tensors)]
            if bad:
                found.append(f"NaN or inf in {' and '.join(bad)} at length {length}")
    finally:
        hook.remove()
    lengths = f"lengths {' and '.join(map(str, PROBE_LENGTHS))}, rows of L, L-1, L-64, L/2, 17 and 1 real tokens"
    return (f"attention: {'; '.join(found) if found else 'no NaN or inf in outputs, loss or gradients'} (left-padded "
            f"{what} forward and backward of TinyStoriesLM, {lengths})")


def fit_options(args, steps: int, out: Path, peak: float | None, smoke_options: list[str]) -> list[str]:
    options = [
        "--trainer.default_root_dir", str(out), "--trainer.devices", "1", "--trainer.max_epochs", "-1",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.log_every_n_steps", str(args.log_every),
        "--data.dataset", args.dataset, "--data.tokenizer", args.tokenizer, "--data.train_split", args.train_split,
    ]
    if peak:
        options += ["--throughput.peak_flops", str(peak)]
    return options + (SMOKE + smoke_options if args.smoke else [])


def run(name: str, config: Path, steps: int, smoke_options: list[str], args, device) -> dict:
    """One `fit`, and what its events and trainer say about it."""
    print(f"\n=== {name}: {config.relative_to(CONFIGS.parent)}, {steps} steps", flush=True)
    peak, source = peak_flops(args, device)
    if device.type == "cuda":
        gc.collect()
        print(f"GPU memory allocated at the start: {gib(torch.cuda.memory_allocated(device))}", flush=True)
    reset_peak_memory(device)
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", str(config),
                    *fit_options(args, steps, args.out_dir / name.split()[0].strip("()"), peak, smoke_options)])
    wall = time.perf_counter() - start
    memory, what = peak_memory(device)
    events = scalars(cli.trainer.logger.log_dir)
    samples = [e.value for e in events.get("throughput/samples_per_sec", [])]
    if len(samples) < 2:
        raise SystemExit(f"error: {name}: {len(samples)} throughput windows; give more --steps than 2 x --log_every")
    seconds = [args.log_every * cli.datamodule.hparams.batch_size / s for s in samples]  # full batches
    mfu = [e.value for e in events.get("throughput/mfu", [])]
    return {
        "name": name, "steps": cli.trainer.global_step, "wall": wall, "windows": len(samples),
        "batch": f"{cli.datamodule.hparams.batch_size} x {cli.datamodule.hparams.max_length}",
        "tokens_s": statistics.median(e.value for e in events["throughput/tokens_per_sec"][1:]),
        "mfu": f"{100 * statistics.median(mfu[1:]):.3g}% of {peak:.3g} FLOP/s ({source})" if mfu[1:] else
               "unknown (give --peak_flops: the device's peak FLOP/s at the training precision)",
        "first": seconds[0], "steady": statistics.median(seconds[1:]), "memory": f"{gib(memory)} ({what})",
        "val_bpb": float(cli.trainer.callback_metrics["val/bpb"]),
        "last_ckpt": Path(cli.trainer.checkpoint_callback.last_model_path),
    }


def report(r: dict, log_every: int) -> None:
    print(f"{r['name']}: {r['steps']} steps of {r['batch']} tokens in {r['wall']:.0f} s (start-up and validation "
          f"included)")
    print(f"  real tokens/s: {r['tokens_s']:,.0f} (median of {r['windows'] - 1} windows of {log_every} steps after "
          f"the first)")
    print(f"  MFU: {r['mfu']}")
    print(f"  first {log_every} steps: {r['first']:.1f} s against {r['steady']:.2f} s for a steady {log_every}: "
          f"{r['first'] - r['steady']:.1f} s of compiling and start-up")
    print(f"  peak memory: {r['memory']}")
    print(f"  val/bpb: {r['val_bpb']:.4f}")
    print(f"  last checkpoint: {r['last_ckpt']}", flush=True)


def generate_and_export(ckpt: Path, out_dir: Path, device: torch.device, max_new_tokens: int) -> None:
    loaded = checkpoint.load(ckpt, device=str(device))
    for i, story in enumerate(sample_stories(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=max_new_tokens,
                                             seed=0), 1):
        print(f"story {i}: {' '.join((story['prompt'] + story['completion']).split())}")
    folder = next(out_dir / f"export{n or ''}" for n in range(100) if not (out_dir / f"export{n or ''}").exists())
    export.main(ckpt_path=ckpt, out_dir=folder)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    ids = loaded.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        diff = float((reloaded(ids).logits - loaded.model(ids).logits).abs().max())
    print(f"export reloaded: {type(reloaded).__name__}, {reloaded.num_parameters():,} parameters from {folder}; "
          f"largest logit difference from the checkpoint's model: {diff:.1e}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps of (a), the fast config (default 300; --smoke 6)")
    parser.add_argument("--recipe_steps", type=int, help="steps of (b), the recipe's settings (default 300; --smoke 6)")
    parser.add_argument("--dataset", help=f"stories (default {TINYSTORIES}; --smoke: synthetic)")
    parser.add_argument("--tokenizer", help=f"tokenizer folder or hub name, or null for a BPE trained on the stories "
                        f"(default {LLAMA_TOKENIZER}; --smoke: null)")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--out_dir", type=Path, help="runs, checkpoints and the export go here (default: a new "
                        "temporary folder, kept)")
    parser.add_argument("--peak_flops", type=float, help="the device's peak FLOP/s at the training precision, for MFU")
    parser.add_argument("--log_every", type=int, help="steps per throughput window (default 10; --smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, synthetic stories, CPU: the same code path")
    args = parser.parse_args()
    steps = 6 if args.smoke else 300
    args.steps, args.recipe_steps = args.steps or steps, args.recipe_steps or steps
    args.log_every = args.log_every or (2 if args.smoke else 10)
    args.dataset = local(args.dataset or ("synthetic" if args.smoke else TINYSTORIES))
    args.tokenizer = args.tokenizer or ("null" if args.smoke else str(LLAMA_TOKENIZER))
    if args.tokenizer != "null":
        local(args.tokenizer)
    args.out_dir = (args.out_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))).absolute()
    return args


def main() -> None:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("error: no CUDA GPU here, and the full-size runs would take hours on a CPU; --smoke runs the "
                         "tiny version (benchmarks/throughput.py compares the two trainings on a CPU)")
    start = time.perf_counter()
    print(describe(device), flush=True)
    dtype = torch.float16 if pick(device.type).precision == "16-mixed" else torch.bfloat16
    print(attention_probe(probe_model(args.smoke, device), device, dtype), flush=True)
    print(f"out_dir: {args.out_dir}")
    results, failed = {}, []
    for name, (config, smoke) in RUNS.items():
        try:
            results[name] = run(name, config, args.steps if name.startswith("(a)") else args.recipe_steps, smoke,
                                args, device)
        except Exception as err:  # UserError too  # the next config still runs: one check shows every failure
            failed.append(name)
            print(f"\n{name}: FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        report(results[name], args.log_every)
    fast, recipe = results.get("(a) fast"), results.get("(b) recipe")
    if fast and recipe:
        print(f"\nratio={fast['tokens_s'] / recipe['tokens_s']:.2f} (real tokens/s, (a) fast config / (b) recipe "
              "settings)")
    if fast:
        print(f"\n=== {fast['name']}: stories from {fast['last_ckpt'].name}, then export")
        generate_and_export(fast["last_ckpt"], args.out_dir, device, 24 if args.smoke else 120)
    print(f"\ngpu_check took {time.perf_counter() - start:.0f} s; runs, checkpoints and the export are in {args.out_dir}")
    if failed:
        raise SystemExit(f"error: {' and '.join(failed)} failed (above)")


if __name__ == "__main__":
    main()
