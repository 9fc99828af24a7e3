"""Peak memory and speed of tokenizing into the cache at two corpus sizes: memory must not grow with the corpus.

    python benchmarks/data_pipeline.py                        # 50k and 500k synthetic stories, LLaMA-2 tokenizer
    python benchmarks/data_pipeline.py --stories 2000 20000   # a quick look
    python benchmarks/data_pipeline.py --txt ../shared/data/tinystories --repeats 10 100   # the .txt reader

Each size runs the project's own path, `TinyStoriesData(...).prepare_data()` then `setup("fit")`, in a fresh
subprocess on an empty temporary cache (the first start), then once more in another subprocess on that cache (the
second start, which must not tokenize again). `--txt` reads a folder's `train.txt` repeated `--repeats` times (in
a temporary folder; the source is only read) in the TinyStories release format instead of synthetic stories.

Memory: the parent samples the child's whole process tree every 50 ms from /proc/PID/smaps_rollup, because
`datasets.map` with `num_proc` forks workers that run while the parent holds its own memory: the tree must be
summed. `getrusage` maxrss is printed beside it as a check: exact per process (no sampling), but RUSAGE_CHILDREN
gives the largest single child, never the sum of the workers running at once. Two sums:
- RSS summed over the tree: an upper bound, which counts the parent's pages that forked workers share
  copy-on-write (torch alone is ~400 MiB) once per worker. The last line, `rss_ratio=X.XX`, is its peak at the last
  size over that at the first.
- PSS (each shared page split among the processes mapping it): closer to the machine's real use, but it grows
  with a run's length as workers' pages are copied on write (up to the RSS sum), so it mixes time with corpus
  size. Split into anonymous memory (heap: what grows if something holds the corpus) and file-backed pages
  (memory-mapped Arrow files: page cache the kernel can drop).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import LLAMA_TOKENIZER, ROOT, local



def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    fields[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass  # the process ended between listing and reading
    return fields


class TreeSampler(threading.Thread):
    """Peak summed PSS (total, anonymous, file-backed), summed RSS and most processes seen of a process tree."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.done = pid, interval, threading.Event()
        self.peak = {"pss": 0, "anon": 0, "file": 0, "rss": 0, "procs": 0}

    def run(self):
        while not self.done.is_set():
            pids = tree_pids(self.pid)
            parts = [memory_kib(p) for p in pids]
            now = {"pss": sum(p.get("Pss", 0) for p in parts), "anon": sum(p.get("Pss_Anon", 0) for p in parts),
                   "file": sum(p.get("Pss_File", 0) + p.get("Pss_Shmem", 0) for p in parts),
                   "rss": sum(p.get("Rss", 0) for p in parts), "procs": len(pids)}
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)
            self.done.wait(self.interval)


def child(args) -> None:
    """One start in this process: prepare_data + setup, timings and token count as one JSON line.

    After a first start (one that tokenized), the source is read once more on its own (`load_split` into a scratch
    folder), to split that start's time into reading the stories and tokenizing them.
    """
    t0 = time.perf_counter()
    import pyarrow.compute as pc

    from tinystories.data import TinyStoriesData
    from tinystories.sources import load_split

    t1 = time.perf_counter()
    dm = TinyStoriesData(dataset=args.dataset, tokenizer=args.tokenizer, synthetic_stories=args.n,
                         max_length=args.max_length, packing=args.packing, num_proc=args.num_proc,
                         cache_dir=args.cache_dir)
    dm.tokenizer  # loading the tokenizer is part of every start
    t2 = time.perf_counter()
    splits = (dm.hparams.train_split, dm.hparams.val_split)
    cached = all(dm.cache_path(split).is_dir() for split in splits)
    dm.prepare_data()
    t3 = time.perf_counter()
    dm.setup("fit")
    t4 = time.perf_counter()
    rows = {s: len(ds) for s, ds in dm.splits.items()}
    tokens = {s: int(pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py()) for s, ds in dm.splits.items()}
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    load_split_s = 0.0
    if not cached:
        with tempfile.TemporaryDirectory(dir=args.cache_dir, prefix="read-") as scratch:
            start = time.perf_counter()
            for split in splits:
                load_split(args.dataset, split, args.n, cache_dir=scratch)
            load_split_s = time.perf_counter() - start
    print("RESULT " + json.dumps({
        "import_s": t1 - t0, "tokenizer_s": t2 - t1, "prepare_s": t3 - t2, "setup_s": t4 - t3, "start_s": t4 - t1,
        "cached": cached, "load_split_s": load_split_s, "rows": rows, "tokens": tokens,
        "maxrss_self_kib": self_kib, "maxrss_children_kib": children_kib,
    }), flush=True)


def run_child(args, n: int, cache_dir: Path, dataset: str) -> dict:
    cmd = [sys.executable, __file__, "--_child", "--_n", str(n), "--_cache_dir", str(cache_dir), "--_dataset", dataset,
           "--tokenizer", args.tokenizer, "--max_length", str(args.max_length), "--num_proc", str(args.num_proc)]
    if args.packing:
        cmd.append("--packing")
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache_dir / "hf-datasets"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"child for n={n} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(wall_s=wall, peak=sampler.peak)
    return result


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def report(label: str, first: dict, second: dict, num_proc: int) -> None:
    p = first["peak"]
    tokens = sum(first["tokens"].values())
    tokenize_s = first["prepare_s"] - first["load_split_s"]
    print(f"{label}: {sum(first['rows'].values()):,} samples, {tokens:,} tokens (train {first['tokens']['train']:,})")
    print(f"  first start: {first['start_s']:.1f} s in process ({first['wall_s']:.1f} s with imports): "
          f"reading/generating stories {first['load_split_s']:.1f} s (timed apart), tokenizing and writing the cache "
          f"{tokenize_s:.1f} s -> {tokens / tokenize_s / num_proc:,.0f} tokens/s/process ({num_proc} processes)")
    print(f"  peak memory of the process tree (sampled PSS): {mib(p['pss'])} (anon {mib(p['anon'])}, file-backed "
          f"{mib(p['file'])}; summed RSS {mib(p['rss'])}), up to {p['procs']} processes; getrusage maxrss: "
          f"self {mib(first['maxrss_self_kib'])}, largest child {mib(first['maxrss_children_kib'])}")
    print(f"  second start (cache reused): {second['start_s']:.2f} s in process ({second['wall_s']:.1f} s with "
          f"imports), peak PSS {mib(second['peak']['pss'])}")
    if not second["cached"]:
        print("  WARNING: the second start found no cache and tokenized again")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, nargs="+", default=[50_000, 500_000],
                        help="synthetic training stories per run (validation gets 1/20 as many)")
    parser.add_argument("--txt", help="a folder with train.txt and valid.txt: measure the .txt reader instead")
    parser.add_argument("--repeats", type=int, nargs="+", default=[10, 100],
                        help="with --txt: how many times train.txt is repeated, per run")
    parser.add_argument("--tokenizer", default=str(LLAMA_TOKENIZER), help="tokenizer folder or hub name")
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(),
                        help="tokenizing processes (data.num_proc; default every core, as for large splits)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary caches (their paths are printed)")
    for hidden in ("--_child", "--_n", "--_cache_dir", "--_dataset"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, action="store_true" if hidden == "--_child" else None)
    args = parser.parse_args()
    if args._child:
        args.n, args.cache_dir, args.dataset = int(args._n), args._cache_dir, args._dataset
        return child(args)

    local(args.tokenizer)
    if args.txt:
        local(Path(args.txt) / "train.txt")
    sizes = args.repeats if args.txt else args.stories
    peaks = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="data-pipeline-"))
        try:
            dataset, label = "synthetic", f"{size:,} synthetic stories"
            if args.txt:
                dataset, label = str(work / "stories"), f"train.txt x{size}"
                repeated_txt(Path(args.txt), work / "stories", size)
            first = run_child(args, size, work / "cache", dataset)
            second = run_child(args, size, work / "cache", dataset)
            report(label, first, second, args.num_proc)
            peaks.append(first["peak"])
        finally:
            if args.keep:
                print(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    ratio = {key: peaks[-1][key] / peaks[0][key] for key in ("pss", "anon", "file", "rss")}
    print(f"pss_ratio={ratio['pss']:.2f} (anon {ratio['anon']:.2f}, file-backed {ratio['file']:.2f})")
    print(f"rss_ratio={ratio['rss']:.2f}")


def repeated_txt(source: Path, out: Path, repeats: int) -> None:
    out.mkdir(parents=True)
    chunk = (source / "train.txt").read_bytes()
    if not chunk.endswith(b"\n"):
        chunk += b"\n"
    with open(out / "train.txt", "wb") as f:
        for _ in range(repeats):
            f.write(chunk)
    (out / "valid.txt").symlink_to((source / "valid.txt").resolve())


if __name__ == "__main__":
    main()
