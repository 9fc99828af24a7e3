"""`python -m tinystories VERB ...`: Lightning's verbs go to LightningCLI, the project's own verbs to jsonargparse.

    python -m tinystories fit --config configs/demo.yaml
    python -m tinystories tokenizer --dataset synthetic --vocab_size 4096 --out_dir my-tokenizer
"""

import sys
from typing import Optional

from jsonargparse import auto_cli

from tinystories import tokenizer

# LightningCLI has no blessed way to add subcommands (Lightning issue #12438), so extra verbs are dispatched first.
VERBS = {"tokenizer": tokenizer.main}


def main(args: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if args is None else args
    if args and args[0] in VERBS:
        auto_cli(VERBS, args=args, prog="python -m tinystories")
    else:
        from tinystories.cli import cli_main

        cli_main(args)


if __name__ == "__main__":
    main()
