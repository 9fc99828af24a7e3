"""Story beginnings to evaluate: the TinyStories paper's 44, or a user's own.

    prompts = load_prompts(None)                              # the paper's file, from the hub (cached)
    prompts = load_prompts("path/Evaluation prompts.yaml")    # a local copy of it: 44 prompts
    prompts = load_prompts("mine.txt")                        # one per line, or stories between <|endoftext|> lines
    prompts = load_prompts("mine.jsonl")                      # a `prompt` or `text` field per line

Prompts are kept exactly as written: many of the paper's stop mid-sentence or end in a space on purpose (the judge
checks that the completion finishes the sentence).
"""

import json
from pathlib import Path
from typing import Optional

import yaml

from tinystories.errors import UserError

PAPER_REPO, PAPER_FILE = "roneneldan/TinyStories", "Evaluation prompts.yaml"
EOT_LINE = "<|endoftext|>"


def paper_prompts_file() -> Path:
    """The paper's prompt file from the hub data set, downloaded once into the hub cache."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(PAPER_REPO, PAPER_FILE, repo_type="dataset"))
    except Exception as err:
        raise UserError(f"--prompts: the paper's prompts could not be downloaded from {PAPER_REPO} "
                        f"({type(err).__name__}); without the hub, give a local copy: --prompts 'Evaluation "
                        "prompts.yaml'") from None


def load_prompts(source: Optional[str]) -> list[str]:
    path = paper_prompts_file() if source is None else Path(source)
    option = f"--prompts {path}"
    if not path.is_file():
        raise UserError(f"{option}: no such file; give a .yaml list, a .txt or a .jsonl of story beginnings")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{option}: not UTF-8 text") from None
    if path.suffix in (".yaml", ".yml"):
        prompts = from_yaml(text, option)
    elif path.suffix == ".jsonl":
        prompts = from_jsonl(text, option)
    else:
        prompts = from_txt(text)
    if not prompts:
        raise UserError(f"{option}: no prompts in it; put one story beginning per line")
    return prompts


def from_yaml(text: str, option: str) -> list[str]:
    try:
        prompts = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{option}: not valid YAML ({type(err).__name__}); it must be a list of strings") from None
    if prompts is None:
        return []
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise UserError(f"{option}: the YAML must be a list of strings (story beginnings), as the paper's file is")
    return [p for p in prompts if p.strip()]


def from_jsonl(text: str, option: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{option}: line {number} is not JSON") from None
        value = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise UserError(f"{option}: line {number} has no `prompt` or `text` string")
        prompts.append(value)
    return [p for p in prompts if p.strip()]


def from_txt(text: str) -> list[str]:
    """One prompt per line; or, when the file has `<|endoftext|>` lines, the text between them (newlines kept)."""
    lines = text.splitlines(keepends=True)
    if not any(line.strip() == EOT_LINE for line in lines):
        return [line.rstrip("\r\n") for line in lines if line.strip()]
    prompts, current = [], []
    for line in lines + [EOT_LINE]:
        if line.strip() == EOT_LINE:
            prompt = "".join(current)
            prompt = prompt[:-2] if prompt.endswith("\r\n") else prompt[:-1] if prompt.endswith("\n") else prompt
            if prompt.strip():
                prompts.append(prompt)
            current = []
        else:
            current.append(line)
    return prompts
