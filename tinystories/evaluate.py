"""Evaluate a model the way the TinyStories paper did: complete its 44 story beginnings, grade them, report.

    python -m tinystories evaluate --ckpt_path last.ckpt --out_dir eval/demo --prompts "Evaluation prompts.yaml"
    python -m tinystories evaluate --ckpt_path my-model --out_dir eval/demo-judged \
        --judge_base_url http://127.0.0.1:11434/v1 --judge_model qwen2.5:7b       # a local Ollama server
    python -m tinystories evaluate --compare eval/demo eval/other                  # a table of several evaluations

`out_dir` gets `completions.jsonl` (a line per completion, with its grades and measures), `summary.json` (means,
counts, settings, the checkpoint) and `report.html`; `judge/` keeps every judge reply, so an interrupted run goes on
where it stopped and a finished one re-runs without a request. When the checkpoint lies in a run's folder
(`lightning_logs/RUN/checkpoints/`), the summary also goes to that run's TensorBoard events as `eval/*` at the
checkpoint's step.
"""

import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Literal, Optional

from tinystories import checkpoint, instruct, measures
from tinystories.errors import UserError
from tinystories.generate import pick_device, sample_stories
from tinystories.judge import AGE_GROUPS, CATEGORIES, Judge, parse_grades, write_json
from tinystories.instruct import evaluation_headers as instruct_headers, header_text as instruct_header_text
from tinystories.prompts import load_prompts

# Fig. 4 of Eldan & Li (2023): GPT-4's grades of two of the paper's models on these 44 prompts.
PAPER = {"hidden 256, 8 layers": {"grammar": 7.72, "creativity": 6.54, "consistency": 8.02, "plot": 7.23},
         "hidden 64, 12 layers": {"grammar": 6.19, "creativity": 4.84, "consistency": 4.75, "plot": 4.39}}
# The shares of summary.json's `instruct` that --compare shows (instruct.follow_rates).
INSTRUCT_SHARES = ("all_words", "words", "random_sentence", "dialogue_when_asked", "no_dialogue_otherwise")
DEFINITIONS = {
    "finished": "share of completions that ended at EOS rather than at max_new_tokens",
    "words": "mean length of a completion in words (runs of letters, digits and apostrophes)",
    "repetition": "1 - distinct/all word 4-grams inside one completion, averaged (0: no 4-gram repeats)",
    "distinct_n": "distinct/all word n-grams pooled over one prompt's samples, averaged over prompts",
    "copied": "largest share of a completion's word 8-grams found in one training story, averaged",
    "stderr": "standard error of the mean over the prompts' mean grades (a prompt's samples are not independent)",
}


def fingerprint(path: Path) -> str:
    """sha256 of the weights: a `.ckpt`, or an exported folder's `model.safetensors`."""
    target = path / "model.safetensors" if path.is_dir() else path
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def check_out_dir(out_dir: Path, run: dict) -> Optional[dict]:
    """The settings an `out_dir` already holds (None when new); another checkpoint's or settings' is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir}: is a file; give a folder")
    path = out_dir / "run.json"
    if not path.is_file():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise UserError(f"--out_dir {out_dir}: holds files that are not an evaluation; give a new or empty folder")
        return None
    held = json.loads(path.read_text(encoding="utf-8"))
    if held.get("checkpoint", {}).get("sha256") != run["checkpoint"]["sha256"]:
        raise UserError(f"--out_dir {out_dir}: holds the evaluation of another checkpoint "
                        f"({held.get('checkpoint', {}).get('path')}); give a new --out_dir (nothing was changed)")
    if held.get("settings") != run["settings"]:
        there = held.get("settings", {})
        differ = sorted(k for k in {*run["settings"], *there} if there.get(k) != run["settings"].get(k))
        shown = "; ".join(f"--{k} {there.get(k)} there, {run['settings'].get(k)} here" for k in differ)
        raise UserError(f"--out_dir {out_dir}: holds an evaluation with other settings ({shown}); to reuse it, run "
                        f"with its settings, or give these settings their own folder, e.g. --out_dir "
                        f"{sibling(out_dir, differ, run['settings'])} (nothing was changed)")
    return held


def sibling(out_dir: Path, differ: list[str], settings: dict) -> Path:
    """A folder name beside `out_dir` for other settings: `eval/demo` -> `eval/demo-batch_size64`."""
    parts = [f"{k}{settings[k]}" for k in differ if isinstance(settings.get(k), (int, float)) and k != "num_prompts"]
    return out_dir.with_name(f"{out_dir.name}-{'-'.join(parts) if parts else 'new'}")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def generate(loaded: checkpoint.Loaded, prompts: list[str], settings: dict) -> list[dict]:
    start = time.perf_counter()
    stories = sample_stories(loaded.model, loaded.tokenizer, prompts, max_new_tokens=settings["max_new_tokens"],
                             do_sample=True, temperature=settings["temperature"], top_k=0, top_p=1.0,
                             num_return_sequences=settings["num_samples"], seed=settings["seed"],
                             batch_size=settings["batch_size"])
    seconds = time.perf_counter() - start
    print(f"Generated {len(stories)} completions ({sum(s['new_tokens'] for s in stories):,} tokens) in {seconds:.0f} s")
    n = settings["num_samples"]
    return [{"prompt_id": i // n, "prompt": s["prompt"], "sample": i % n, "completion": s["completion"],
             "finished": s["eos"], "new_tokens": s["new_tokens"]} for i, s in enumerate(stories)]


def add_measures(rows: list[dict], train_data: Optional[str], train_split: str, headers: Optional[list] = None) -> None:
    index = None
    if train_data:
        from tinystories.sources import iter_texts, load_split

        index = measures.NgramIndex(iter_texts(load_split(train_data, train_split)))
        print(f"Indexed the word {index.k}-grams of {index.stories:,} training stories of {train_data}")
    for row in rows:
        row["words"] = len(measures.words(row["completion"]))
        row["repetition"] = measures.repetition(row["completion"])
        row["copied"] = index.copied(row["completion"]) if index else None
        if headers is not None:
            row["header"] = headers[row["prompt_id"]][0]
            row["follows"] = instruct.follows(row["header"], row["completion"])


def add_grades(rows: list[dict], judge: Optional[Judge]) -> None:
    if judge is None:
        for row in rows:
            row.update(grades=None, judge_reply=None, judge_assessment=None)
        return
    todo = sum(judge.cached(r["prompt"], r["completion"]) is None for r in rows)
    print(f"Judging {len(rows)} completions with {judge.model} ({len(rows) - todo} already graded) ...")
    replies = judge.grade_all([(r["prompt"], r["completion"]) for r in rows])
    for row, reply in zip(rows, replies):
        row.update(grades=parse_grades(reply["reply"], judge.categories), judge_reply=reply["reply"],
                   judge_assessment=reply["assessment"])


def mean_and_stderr(rows: list[dict], name: str) -> dict:
    by_prompt: dict[int, list[float]] = {}
    for row in rows:
        if row["grades"] and row["grades"].get(name) is not None:
            by_prompt.setdefault(row["prompt_id"], []).append(row["grades"][name])
    values = [v for vs in by_prompt.values() for v in vs]
    if not values:
        return {"mean": None, "stderr": None, "n": 0}
    prompt_means = [statistics.fmean(vs) for vs in by_prompt.values()]
    stderr = statistics.stdev(prompt_means) / math.sqrt(len(prompt_means)) if len(prompt_means) > 1 else None
    return {"mean": statistics.fmean(values), "stderr": stderr, "n": len(values)}


def judge_free(rows: list[dict]) -> dict:
    by_prompt: dict[int, list[str]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row["completion"])
    out = {"finished": statistics.fmean(r["finished"] for r in rows),
           "words": statistics.fmean(r["words"] for r in rows),
           "repetition": statistics.fmean(r["repetition"] for r in rows)}
    for n in (1, 2, 3):
        values = [v for texts in by_prompt.values() if (v := measures.distinct(texts, n)) is not None]
        out[f"distinct_{n}"] = statistics.fmean(values) if values else None
    copied = [r["copied"] for r in rows if r["copied"] is not None]
    out["copied"] = statistics.fmean(copied) if copied else None
    return out


def summarize(rows: list[dict], run: dict, judge: Optional[Judge]) -> dict:
    graded = [r for r in rows if r["grades"]]
    extra = {"instruct": instruct.follow_rates(rows)} if run["settings"].get("instruct") else {}
    ages = {letter: sum(r["grades"]["age_group"] == letter for r in graded) for letter in AGE_GROUPS}
    ages["none"] = sum(r["grades"]["age_group"] is None for r in graded)
    return {**run, "judge": {"base_url": judge.base_url, "model": judge.model} if judge else None,
            "completions": len(rows), "graded": len(graded), "ungraded": len(rows) - len(graded),
            "means": {name: mean_and_stderr(rows, name) for name in CATEGORIES}, "age_groups": ages,
            "judge_free": judge_free(rows), "paper": {} if extra else PAPER, "definitions": DEFINITIONS, **extra}


def run_folder(ckpt_path: Path) -> Optional[Path]:
    """The `lightning_logs/RUN` folder a checkpoint was written in, if it is one."""
    folder = ckpt_path.resolve().parent.parent
    if ckpt_path.is_file() and ckpt_path.parent.name == "checkpoints" and any(folder.glob("events.out.tfevents.*")):
        return folder
    return None


def log_to_tensorboard(folder: Path, step: int, summary: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    prefix = "eval_instruct" if "instruct" in summary else "eval"  # the two kinds of evaluation apart
    scalars = {f"{prefix}/{k}": v for k, v in summary["judge_free"].items() if v is not None}
    scalars.update({f"{prefix}/{k}": v["mean"] for k, v in summary["means"].items() if v["mean"] is not None})
    scalars.update({f"{prefix}/{k}": v for k, v in summary.get("instruct", {}).items()
                    if isinstance(v, float)})
    with SummaryWriter(str(folder)) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
    print(f"Logged {len(scalars)} {prefix}/* scalars to {folder} at step {step}")


def compare_table(folders: list[Path]) -> str:
    """A markdown table of several evaluations' summaries, side by side with the paper's rows; with an `--instruct`
    evaluation among them, the shares of stories that follow their headers too (`-` for the others)."""
    summaries = []
    for folder in folders:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise UserError(f"--compare {folder}: no summary.json; give folders written by evaluate")
        summaries.append((folder, json.loads(path.read_text(encoding="utf-8"))))
    shares = list(INSTRUCT_SHARES) if any("instruct" in s for _, s in summaries) else []
    free = ["finished", "repetition", "distinct_2", "copied"]
    columns = [*CATEGORIES, "graded", *free, *shares]
    lines = ["| evaluation | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for folder, s in summaries:
        cells = [fmt(s["means"][c]["mean"], s["means"][c]["stderr"]) for c in CATEGORIES]
        cells += [f"{s['graded']}/{s['completions']}"] + [fmt(s["judge_free"][k]) for k in free]
        cells += [fmt(s.get("instruct", {}).get(k)) for k in shares]
        lines.append(f"| {folder} | " + " | ".join(cells) + " |")
    for name, grades in PAPER.items():
        blanks = " |" * (len(columns) - len(CATEGORIES))
        lines.append(f"| paper, {name} | " + " | ".join(f"{grades[c]:.2f}" for c in CATEGORIES) + " |" + blanks)
    return "\n".join(lines)


def fmt(value: Optional[float], stderr: Optional[float] = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ± {stderr:.2f}" if stderr is not None else f"{value:.3g}"


def main(
    *,
    ckpt_path: Optional[Path] = None,
    out_dir: Optional[Path] = None,
    prompts: Optional[str] = None,
    num_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 300,
    seed: int = 0,
    batch_size: int = 8,
    judge_base_url: Optional[str] = None,
    judge_model: Optional[str] = None,
    judge_concurrency: int = 8,
    judge_timeout: float = 120.0,
    train_data: Optional[str] = None,
    train_split: str = "train",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    compare: Optional[list[Path]] = None,
    instruct: bool = False,
    prompts_split: str = "validation",
) -> None:
    """Complete story beginnings with a model, grade them (with a judge if given), and write a report.

    Args:
        ckpt_path: A Lightning checkpoint (`.ckpt`) or a folder written by `python -m tinystories export`.
            Required unless --compare is given.
        out_dir: Folder for completions.jsonl, summary.json, report.html and the judge's replies; rerunning the same
            command there reuses what it holds, and other settings need another folder. Required unless --compare
            is given.
        prompts: Story beginnings: a .yaml list (the paper's `Evaluation prompts.yaml`), a .txt (one per line, or
            separated by `<|endoftext|>` lines) or a .jsonl (`prompt` or `text`); null downloads the paper's 44
            from the hub data set roneneldan/TinyStories.
        num_samples: Completions per prompt (the paper: 10).
        temperature: Sampling temperature, no top-k or top-p (the paper: 1.0).
        max_new_tokens: Most tokens per completion; it ends earlier at EOS.
        seed: Random seed for sampling.
        batch_size: Prompts generated together (each with its num_samples completions).
        judge_base_url: An OpenAI-compatible API (vLLM, Ollama, llama.cpp: http://HOST:PORT/v1); null with a
            judge_model is OpenAI's. The key comes from OPENAI_API_KEY.
        judge_model: The judge's model name; null grades nothing (judge-free measures only).
        judge_concurrency: Judge requests in flight at once.
        judge_timeout: Seconds before a judge request is abandoned and retried.
        train_data: A data source (as data.dataset) whose stories completions are checked against for copying.
        train_split: The split of train_data to check against.
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        compare: Instead of evaluating, print a table of these evaluation folders' summaries.
        instruct: TinyStories-Instruct: the prompts are headers (words, features, summary, random sentence) and
            summary.json gains `instruct` (how often the stories follow them). --prompts is then an instruct file or
            data set (its records' headers), or a plain story source (headers derived from its stories as for
            training, `data.instruct: derive`).
        prompts_split: With --instruct and a data set as --prompts, the split whose headers are used.
    """
    if compare:
        print(compare_table(list(compare)))
        return
    if ckpt_path is None or out_dir is None:
        raise UserError("evaluate needs --ckpt_path and --out_dir (or --compare FOLDER ...)")
    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UserError("--num_samples, --max_new_tokens and --batch_size must be at least 1")
    if not temperature > 0:
        raise UserError(f"--temperature is {temperature}; it must be positive (the paper samples at 1.0)")
    if judge_concurrency < 1 or not judge_timeout > 0:
        raise UserError("--judge_concurrency must be at least 1 and --judge_timeout above 0 seconds")
    if judge_base_url and not judge_model:
        raise UserError("--judge_base_url needs --judge_model (the model name the server serves)")
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    headers = None
    if instruct:
        if prompts is None:
            raise UserError("--instruct needs --prompts: an instruct file or data set, or a plain story source")
        headers = instruct_headers(prompts, prompts_split)
        texts = [instruct_header_text(h, o) for h, o in headers]
    else:
        texts = load_prompts(prompts)
    if not ckpt_path.exists():
        raise UserError(f"--ckpt_path {ckpt_path}: no such file or folder; give a .ckpt or an exported folder")
    settings = dict(prompts=str(prompts) if prompts else "roneneldan/TinyStories: Evaluation prompts.yaml",
                    num_prompts=len(texts), num_samples=num_samples, temperature=temperature,
                    max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    if instruct:
        settings.update(instruct=True, prompts_split=prompts_split)
    run = {"checkpoint": {"path": str(ckpt_path), "sha256": fingerprint(ckpt_path)}, "settings": settings}
    held = check_out_dir(out_dir, run)
    judge = (Judge(judge_base_url, judge_model, out_dir / "judge", judge_concurrency, judge_timeout, instruct=instruct)
             if judge_model else None)
    rows = read_rows(out_dir / "completions.jsonl") if held else None
    if judge and not (rows and all(judge.cached(r["prompt"], r["completion"]) for r in rows)):
        judge.check()  # before any completion is generated
    if rows is None:
        loaded = checkpoint.load(ckpt_path, pick_device(device))
        rows = generate(loaded, texts, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        run["checkpoint"]["step"] = loaded.step
        write_rows(out_dir / "completions.jsonl", rows)
        write_json(out_dir / "run.json", run)  # last: its presence says the completions are whole
    else:
        run = held
        print(f"Reusing the {len(rows)} completions in {out_dir}")
    add_measures(rows, train_data, train_split, headers)
    add_grades(rows, judge)
    summary = summarize(rows, run, judge)
    write_rows(out_dir / "completions.jsonl", rows)
    write_json(out_dir / "summary.json", summary)
    from tinystories.report import write_html

    write_html(out_dir / "report.html", summary, rows)
    print(headline(summary))
    print(f"Wrote {out_dir}/completions.jsonl, summary.json and report.html")
    if judge:
        print(f"Judge requests made: {judge.requests}")
    folder = run_folder(ckpt_path)
    if folder is not None and run["checkpoint"].get("step") is not None:
        log_to_tensorboard(folder, run["checkpoint"]["step"], summary)


def headline(summary: dict) -> str:
    free, means = summary["judge_free"], summary["means"]
    parts = [f"{summary['completions']} completions, {summary['graded']} graded, {summary['ungraded']} ungraded"]
    parts += [f"{name} {fmt(v['mean'], v['stderr'])}" for name, v in means.items() if v["mean"] is not None]
    parts += [f"finished {free['finished']:.2f}", f"repetition {free['repetition']:.3f}",
              f"distinct-2 {fmt(free['distinct_2'])}"]
    parts += [f"copied {free['copied']:.3f}"] if free["copied"] is not None else []
    if "instruct" in summary:
        parts += [f"instruct: {k} {fmt(v)}" for k, v in summary["instruct"].items()
                  if k in ("all_words", "words", "random_sentence") and v is not None]
    return "; ".join(parts)
