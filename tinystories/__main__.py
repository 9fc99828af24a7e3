"""`python -m tinystories VERB ...`: Lightning's verbs go to LightningCLI, the project's own verbs to jsonargparse.

    python -m tinystories fit --config configs/demo.yaml
    python -m tinystories tokenizer --dataset synthetic --vocab_size 4096 --out_dir my-tokenizer
    python -m tinystories generate --ckpt_path last.ckpt --prompt "Once upon a time" --prompt "Tom and Sam"
    python -m tinystories export --ckpt_path last.ckpt --out_dir my-model
"""

import errno
import sys
from typing import Optional

from jsonargparse import ArgumentError, auto_cli

from tinystories import InputError, export, generate, tokenizer
from tinystories.callbacks import LossDiverged
from tinystories.checks import one_line

# LightningCLI has no blessed way to add subcommands (Lightning issue #12438), so extra verbs are dispatched first.
VERBS = {"tokenizer": tokenizer.main, "generate": generate.main, "export": export.main}

# jsonargparse keeps the last of a repeated option (lists grow with `--name+=VALUE`); these may be repeated.
REPEATABLE = ("--prompt",)


def append_repeats(args: list[str]) -> list[str]:
    """`--prompt a --prompt b` -> `--prompt a --prompt+=b`, so every prompt is kept."""
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


def main(args: Optional[list[str]] = None) -> None:
    given, args = args, sys.argv[1:] if args is None else args
    try:
        if args and args[0] in VERBS:
            try:
                auto_cli(VERBS, args=append_repeats(args), prog="python -m tinystories", exit_on_error=False)
            except ArgumentError as err:  # jsonargparse would print the whole usage before it
                raise SystemExit(f"error: {one_line(err)}; `python -m tinystories {args[0]} --help` lists the "
                                 "options") from None
        else:
            from tinystories.cli import cli_main

            cli_main(given)  # None: LightningCLI reads sys.argv itself (and warns when given both)
    except (InputError, LossDiverged) as err:  # one line that says what to do, not a traceback
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
