"""`python -m tinystories VERB ...`: Lightning's verbs go to LightningCLI, the project's own verbs to jsonargparse.

    python -m tinystories                     # the verbs, one line each
    python -m tinystories fit --config configs/demo.yaml --run demo
    python -m tinystories generate --ckpt_path last.ckpt --prompt "Once upon a time" --prompt "Tom and Sam"

Every `UserError` (and a full disk) ends here as one line, `error: ...`, and exit status 1.
"""

import errno
import sys
from typing import Optional

from jsonargparse import ArgumentError, auto_cli

from tinystories import evaluate, export, generate, tokenizer
from tinystories.cli import LIGHTNING_VERBS, PROG
from tinystories.errors import UserError, one_line
from tinystories.help import HelpFormatter

# LightningCLI has no blessed way to add subcommands (Lightning issue #12438), so extra verbs are dispatched first.
VERBS = {"tokenizer": tokenizer.main, "generate": generate.main, "evaluate": evaluate.main, "export": export.main}
SUMMARY = {
    "fit": "train a model (or resume one with --ckpt_path) from a YAML config: --config configs/demo.yaml --run demo",
    "validate": "score a checkpoint on the validation split: val/loss, val/ppl, val/bpb",
    "test": "score a checkpoint on data.test_split (default: the validation split): test/loss, test/ppl, test/bpb",
    "tokenizer": "train a byte-level BPE tokenizer on a data source",
    "generate": "write stories from a checkpoint or an exported folder",
    "evaluate": "complete the TinyStories paper's 44 story beginnings, grade them (LLM judge optional), report",
    "export": "write a checkpoint as a Hugging Face model folder with a model card (--gguf: and a GGUF for llama.cpp "
              "and Ollama); upload it, or one exported before",
}

# jsonargparse keeps the last of a repeated option (lists grow with `--name+=VALUE`); these may be repeated.
REPEATABLE = ("--prompt",)
# Options that take several values in a row: `--compare eval/a eval/b`.
SEVERAL = ("--compare",)
# Boolean options that may stand alone as flags: `--instruct` means `--instruct true`.
FLAGS = ("--instruct", "--gguf", "--overwrite")


def usage() -> str:
    width = max(map(len, SUMMARY))
    lines = [f"usage: {PROG} VERB [options]", "", "Train small LLaMA models on TinyStories, write stories with them, "
             "and publish them in Hugging Face format.", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, text in SUMMARY.items()]
    lines += ["", f"`{PROG} VERB --help` lists a verb's options."]
    return "\n".join(lines)


def spread_values(args: list[str]) -> list[str]:
    """`--compare a b` -> `--compare+=a --compare+=b` (a list option's values appended one by one), and a bare
    `--instruct` -> `--instruct true`."""
    out, current = [], None
    for i, arg in enumerate(args):
        if arg in FLAGS and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out += [arg, "true"]
            continue
        if arg in SEVERAL:
            current = arg
            continue
        if current and not arg.startswith("-"):
            out.append(f"{current}+={arg}")
            continue
        current = None
        out.append(arg)
    return out


def append_repeats(args: list[str]) -> list[str]:
    """`--prompt a --prompt b` -> `--prompt a --prompt+=b`, so every prompt is kept."""
    args = spread_values(args)
    out, seen, i = [], set(), 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in REPEATABLE and (eq or i + 1 < len(args)):
            value, i = (value, i + 1) if eq else (args[i + 1], i + 2)
            out += [f"{name}+={value}"] if name in seen else [name, value]
            seen.add(name)
        else:
            seen.update([name[:-1]] if name.endswith("+") else [])  # `--prompt+=a` then `--prompt b` keeps both
            out.append(args[i])
            i += 1
    return out


def run(args: list[str], given: Optional[list[str]]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        if not args:
            raise SystemExit(2)
        return
    verb = args[0]
    if verb in VERBS:
        try:
            auto_cli(VERBS[verb], args=append_repeats(args[1:]), prog=f"{PROG} {verb}", exit_on_error=False,
                     formatter_class=HelpFormatter)
        except ArgumentError as err:  # jsonargparse would print the whole usage before it
            raise UserError(f"{one_line(err)}; `{PROG} {verb} --help` lists the options") from None
    elif verb in LIGHTNING_VERBS or verb.startswith("-"):
        from tinystories.cli import cli_main

        cli_main(given)  # None: LightningCLI reads sys.argv itself
    elif verb == "predict":
        raise UserError(f"`predict`: stories are written by `{PROG} generate --ckpt_path CKPT --prompt TEXT` "
                        "(`--output FILE.jsonl` keeps them)")
    else:
        raise UserError(f"unknown verb {verb!r}; it must be one of {', '.join(SUMMARY)} (`{PROG} --help`)")


def main(args: Optional[list[str]] = None) -> None:
    given, args = args, sys.argv[1:] if args is None else args
    try:
        run(args, given)
    except UserError as err:  # one line that says what to do, not a traceback
        raise SystemExit(f"error: {err}") from None
    except ArgumentError as err:  # a --ckpt_path's hyperparameters that this version's model does not take
        raise SystemExit(f"error: {one_line(err)}") from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise SystemExit(f"error: no space left on device ({err}); files written before are intact (checkpoints "
                         "are replaced atomically): free space, then resume with --ckpt_path last") from None


if __name__ == "__main__":
    main()
