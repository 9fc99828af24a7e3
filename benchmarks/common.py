"""What the benchmarks share: settings read from the YAML configs, data, interleaved timing, peak memory, events.

    from common import TINYSTORIES, architecture, data_module, interleaved, load_config, optimization, token_ids
    config = load_config("configs/demo.yaml")
    dm = data_module(config, dataset=TINYSTORIES, num_workers=0)      # prepared and set up
    lm = TinyStoriesLM(architecture(config, **token_ids(dm)), optimization(config))

A script runs as `python benchmarks/NAME.py`, which puts this folder first on sys.path (so `from common import ...`);
`tinystories` is the installed package (`pip install -e .`). Settings come from the configs, never copied by hand;
a benchmark states only what it changes (a CPU-sized batch, say) as overrides.
"""

import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from tinystories import precision
from tinystories.data import TinyStoriesData
from tinystories.model import Architecture
from tinystories.optim import Optimization

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED = ROOT.parent / "shared" / "data"  # ../shared/data beside the repository, read-only
TINYSTORIES = SHARED / "tinystories"  # 7,711 training and 1,507 validation stories, TinyStories release format
LLAMA_TOKENIZER = SHARED / "llama2-tokenizer"
_UNSET = object()


def local(path) -> str:
    """`path` as a string. A missing local path (a Path, or text starting with `.`, `/` or `~`; hub names pass) ends
    the script with one line, which names ../shared/data when the path is under it."""
    text = str(path)
    if not (isinstance(path, Path) or text.startswith((".", "/", "~"))) or Path(text).expanduser().exists():
        return text
    if Path(text).expanduser().resolve().is_relative_to(SHARED.resolve()):
        raise SystemExit(f"error: {text} is missing: this benchmark reads the shared data in ../shared/data beside "
                         f"the repository ({SHARED}: real TinyStories stories, the LLaMA-2 tokenizer); put it there "
                         "or give other data with --dataset/--tokenizer")
    raise SystemExit(f"error: {text}: no such file or folder")


def machine(hidden_size: int = 256, intermediate_size: Optional[int] = None) -> str:
    """A benchmark's first line: the CPU class and the precision `trainer.precision: null` picks on it, and why."""
    chosen = precision.pick("cpu", hidden_size, intermediate_size)
    return f"CPU class: {precision.cpu_class()}; precision: {chosen.precision} ({chosen.reason})"


def load_config(path) -> dict:
    """A YAML config as a dict; a relative path is looked up from here, then from the repository root."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute():
        path = ROOT / path
    with open(local(path)) as f:
        return yaml.safe_load(f)


def architecture(config: dict, **overrides) -> Architecture:
    """`model.architecture` of a config, with `overrides` (the vocabulary and token ids: `token_ids(dm)`)."""
    return Architecture(**{**(config.get("model", {}).get("architecture") or {}), **overrides})


def optimization(config: dict, **overrides) -> Optimization:
    """`model.optimization` of a config, with `overrides`."""
    return Optimization(**{**(config.get("model", {}).get("optimization") or {}), **overrides})


def token_ids(dm: TinyStoriesData) -> dict:
    """What the CLI links from the data module's tokenizer into `model.architecture`."""
    return dict(vocab_size=dm.vocab_size, pad_token_id=dm.pad_token_id, bos_token_id=dm.bos_token_id,
                eos_token_id=dm.eos_token_id)


def data_module(config: dict, dataset=None, tokenizer=_UNSET, **overrides) -> TinyStoriesData:
    """`data` of a config with `dataset`, `tokenizer` (None: a BPE trained on the stories) and `overrides`;
    prepared (tokenized into the cache, once) and set up for fit."""
    settings = {**(config.get("data") or {}), **overrides}
    if dataset is not None:
        settings["dataset"] = local(dataset) if dataset != "synthetic" else dataset
    if tokenizer is not _UNSET:
        settings["tokenizer"] = None if tokenizer is None else local(tokenizer)
    dm = TinyStoriesData(**settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_step(lm, optimizer, batch: dict, bf16: bool, clip: Optional[float] = None) -> None:
    """One training step as `fit` makes it on a CPU: forward and loss (bf16 autocast or fp32), backward, clip, step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        nats, count = lm.nats(batch)
    (nats / count).backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(lm.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class Timing:
    ms: float  # median milliseconds per step
    faults: float  # median minor page faults per step


def interleaved(variants: dict[str, Callable[[int], None]], rounds: int, steps: int,
                before: Optional[Callable[[str], None]] = None) -> dict[str, Timing]:
    """Time each variant in one process, taking turns: every round, each runs `steps` steps (`variant(i)`, i the
    step within the round) after `before(name)`. Round 0 warms up and is not timed. Medians over `rounds`."""
    times = {name: [] for name in variants}
    faults = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, step in variants.items():
            if before is not None:
                before(name)
            start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for i in range(steps):
                step(i)
            if round_:
                times[name].append((time.perf_counter() - start) / steps)
                faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / steps)
    return {name: Timing(statistics.median(times[name]) * 1e3, statistics.median(faults[name])) for name in variants}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak on a GPU; a process's max RSS cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak bytes and what they are: `torch.cuda.max_memory_allocated` on a GPU, else this process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated since the run began"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "max RSS of this process so far"


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def scalars(log_dir) -> dict[str, list]:
    """Every scalar of a run's TensorBoard events (`lightning_logs/version_N`): tag -> [(step, wall_time, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
