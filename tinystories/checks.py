"""The CLI's checks at the edge, before any work: each failure is a `UserError`, printed as one line.

    checks.writable("--trainer.default_root_dir", root)   # before training writes anything
    given = checks.after_parse(config)                      # a bad --ckpt_path fails here, before Lightning reads it
    checks.before_fit(cli, config)                          # folders writable, the checkpoint fits the model
    checks.new_run(trainer, "base", resuming=False)         # a run name already used is refused
    checks.option_error(message, parser)                    # jsonargparse's usage dump -> one line
"""

import difflib
import json
import os
import re
from pathlib import Path
from typing import Optional

from tinystories import checkpoint
from tinystories.errors import UserError, one_line


def writable(option: str, folder: Path) -> None:
    """Fail unless `folder` can be created or written, without creating anything.

    `os.access` asks the kernel, so a read-only file system fails even for root; a folder that is read-only only
    by its mode bits is writable for root, and writing there then works.
    """
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{option} {folder}: {existing} is a file, not a folder; give a folder to write to "
                         "(nothing was written)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: cannot write in {existing} (read-only or no permission); give a "
                         "writable folder (nothing was written)")


def after_parse(config) -> dict:
    """The model options as given, before Lightning replaces them with --ckpt_path's; a bad --ckpt_path fails here.

    Args:
        config: LightningCLI's parsed config (with or without a subcommand).
    """
    config = config[config.subcommand] if config.get("subcommand") else config
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise UserError(f"--ckpt_path {ckpt_path}: no such file; give a .ckpt written by fit, or `last`")
        checkpoint.hparams(Path(ckpt_path))
    max_time(config.get("trainer", {}).get("max_time"))
    model = config.get("model")
    return model.as_dict() if hasattr(model, "as_dict") else dict(model or {})


def max_time(value) -> None:
    """`trainer.max_time` as Lightning's `Timer` parses a string: `DD:HH:MM:SS`, four whole numbers."""
    if isinstance(value, str) and not re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        raise UserError(f"--trainer.max_time {value!r}: give DD:HH:MM:SS, four numbers (00:01:30:00 is 90 minutes)")


def before_fit(cli, config: dict) -> None:
    """Output folders writable, the checkpoint resumable into this model; checkpoints read without code execution.

    Args:
        cli: The `TinyStoriesCLI`, with trainer, model and data module built.
        config: The fit arguments (`ckpt_path` already resolved from `last`), changed in place.
    """
    trainer = cli.trainer
    if trainer.max_steps == -1 and trainer.max_epochs == -1:  # Lightning would train until stopped
        raise UserError("--trainer.max_steps -1 with --trainer.max_epochs -1: the learning-rate schedule needs the "
                        "run's length; set trainer.max_steps (with model.optimization.schedule_by_max_time, "
                        "trainer.max_time may end the run sooner) or trainer.max_epochs")
    folders = {"--trainer.default_root_dir": trainer.default_root_dir}
    if trainer.logger is not None and trainer.logger.root_dir:
        folders["--trainer.logger (save_dir)"] = trainer.logger.root_dir
    if getattr(trainer.checkpoint_callback, "dirpath", None):
        folders["--checkpoint.dirpath"] = trainer.checkpoint_callback.dirpath
    if getattr(cli.datamodule, "cache_dir", None):
        folders["--data.cache_dir"] = cli.datamodule.cache_dir
    for option, folder in folders.items():
        writable(option, Path(folder))
    if config.get("ckpt_path"):
        path = Path(config["ckpt_path"])
        linked = {k: cli.model.hparams["architecture"][k]
                  for k in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")}
        given = dict(cli.given_model.get("architecture") or {})
        checkpoint.same_architecture(path, checkpoint.hparams(path)["architecture"], {**given, **linked})
    if cli.model.hparams.get("init_from") and not config.get("ckpt_path"):
        same_as_init(cli)
    if config.get("weights_only") is None:
        config["weights_only"] = True  # Lightning would unpickle anything from an http(s) checkpoint by default


def new_run(trainer, run: Optional[str], resuming: bool) -> None:
    """A `fit` that does not resume writes into a folder no run has used; a used one stops here, not at Lightning's
    traceback when it finds the old config.yaml. Rank zero checks, before it starts the other processes.

    Args:
        trainer: The built trainer; its `log_dir` is the run's folder.
        run: `--run`, for the message.
        resuming: Whether `--ckpt_path` is given (a resumed run goes on in its own folder).
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if resuming or rank_zero_only.rank != 0:
        return
    folder = Path(trainer.log_dir)
    if (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir():
        where = f"--run {run}" if run else "--trainer.default_root_dir"
        raise UserError(f"{where}: {folder} holds a run already; resume it with --ckpt_path last, or give another "
                        f"{'run name' if run else 'folder'} (nothing was written)")


def init_from(path: str) -> None:
    """`model.init_from` is a checkpoint or an exported folder (its architecture is compared in `before_fit`)."""
    checkpoint.architecture_of(Path(path), "model.init_from")


def vocabulary(tokenizer) -> dict:
    """What makes two tokenizers the same: their `tokenizer.json` without padding and truncation settings."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    return {k: v for k, v in state.items() if k not in ("padding", "truncation")}


def same_as_init(cli) -> None:
    """The pretrained model's architecture and tokenizer are the run's, or one line names the difference."""
    path, option = Path(cli.model.hparams["init_from"]), "model.init_from"
    advice = ("set model.architecture to the pretrained model's (its config.yaml), and data.tokenizer to null (then "
              "the pretrained model's tokenizer is used)")
    checkpoint.same_architecture(path, checkpoint.architecture_of(path, option), cli.model.hparams["architecture"],
                                 option, advice)
    if vocabulary(checkpoint.tokenizer_at(path, option)) != vocabulary(cli.datamodule.tokenizer):
        raise UserError(f"{option} {path}: was trained with another tokenizer than data.tokenizer "
                        f"{cli.datamodule.hparams.tokenizer}; set data.tokenizer to null to use its own")


def option_names(parser) -> list[str]:
    """Every `--dotted.option` a (LightningCLI sub)parser accepts, for suggestions."""
    names = []
    for action in getattr(parser, "_actions", []):
        names += [s for s in action.option_strings if s.startswith("--")]
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names += option_names(sub)
    return names


def option_error(message: str, parser, args: Optional[list] = None) -> str:
    """jsonargparse's error (printed after a 60-line usage by default) as one line, with a close match if any.

    Args:
        message: The `ArgumentError`'s text.
        parser: The parser that failed, for the options it knows.
        args: The command line, for the subcommand and the `--config` files to name.
    """
    args = [str(a) for a in args or []]
    command = args[0] if args and not args[0].startswith("-") else "fit"
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    group = re.search(r"(Group|Subcommand) '([\w.]+)' does not accept option '([\w.]+)'", message)
    unknown = (f"--{group[2]}.{group[3]}" if group[1] == "Group" else f"--{group[3]}") if group else None
    unknown = unknown or next(iter(re.findall(r"unrecognized arguments: (--[\w.]+)", message)), None)
    hint = None
    if unknown:
        close = difflib.get_close_matches(unknown, option_names(parser), n=1, cutoff=0.8)
        hint = f"did you mean {close[0].lstrip('-')}?" if close else None
        where = f"--config {' '.join(configs)}" if group and configs else "the command line"
        message = f"{where}: unknown option {unknown.lstrip('-')}"
    return "; ".join(filter(None, [one_line(message), hint, f"`python -m tinystories {command} --help` lists them"]))
