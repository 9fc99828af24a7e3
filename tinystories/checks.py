"""Checks at the edge, before any work: each failure is an `InputError` that `python -m tinystories` prints as one line.

    checks.writable("--trainer.default_root_dir", root)          # before training writes anything
    hparams = checks.checkpoint_hparams("--ckpt_path", path)     # a truncated or foreign file fails here
    checks.same_architecture(path, hparams, expected)            # not Lightning's size-mismatch traceback
    checks.option_error(message, parser)                         # jsonargparse's usage dump -> one line

Checkpoints are read with `weights_only=True` (nothing in them is executed) and `mmap=True`, so a check reads the
pickled metadata, not the tensors: 8 ms for a 232 MB checkpoint (58 tensors) against 174 ms for a full load,
measured once on this project's 2-core machine (warm page cache).
"""

import difflib
import os
import re
import zipfile
from pathlib import Path
from typing import Optional

import torch

from tinystories import InputError

# Hyperparameters that decide the weights' shapes and meaning: a checkpoint is resumed only into the same ones.
# `intermediate_size: null` is compared as the width it resolves to, so null and 768 agree for hidden 256.
ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")


def one_line(text: object, limit: int = 300) -> str:
    """`text` with its whitespace runs as single spaces, cut to `limit` characters (library errors span lines)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def writable(option: str, folder: Path) -> None:
    """Fail unless `folder` can be created or written, without creating anything.

    `os.access` asks the kernel, so a read-only file system fails even for root; a folder that is read-only only
    by its mode bits is writable for root, and writing there then works.
    """
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: {existing} is a file, not a folder; give a folder to write to "
                         "(nothing was written)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder}: cannot write in {existing} (read-only or no permission); give a "
                         "writable folder (nothing was written)")


def checkpoint_hparams(option: str, path: Path) -> dict:
    """The hyperparameters saved in a Lightning checkpoint; a file that is not one fails with its name."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose directory is at the end: a cut file has none
        raise InputError(f"{option} {path}: truncated or not a checkpoint (no zip directory at its end); use another "
                         "checkpoint, e.g. an earlier one or the run's last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a damaged archive, or a pickle of objects other than tensors and plain data
        raise InputError(f"{option} {path}: not a readable Lightning checkpoint ({type(err).__name__}: "
                         f"{one_line(err, 160)}); use another checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{option} {path}: not a Lightning checkpoint (no state_dict); give a .ckpt written by fit")
    return dict(checkpoint.get("hyper_parameters") or {})


def resolved(hparams: dict) -> dict:
    from tinystories.model import mlp_size

    out = {k: hparams.get(k) for k in ARCHITECTURE if k in hparams}
    if "intermediate_size" in out and not out["intermediate_size"] and hparams.get("hidden_size"):
        out["intermediate_size"] = mlp_size(hparams["hidden_size"])
    return out


def same_architecture(path: Path, saved: dict, expected: dict) -> None:
    """Fail, naming every differing field, unless the checkpoint's architecture and tokenizer ids are `expected`."""
    saved, expected = resolved(saved), resolved(expected)
    differ = [f"{k} {saved[k]} (config: {expected[k]})" for k in ARCHITECTURE
              if k in saved and k in expected and saved[k] != expected[k]]
    if differ:
        raise InputError(f"--ckpt_path {path}: was trained with {', '.join(differ)}; resume with the run's own "
                         "config (--config lightning_logs/version_N/config.yaml) and tokenizer, or start a new run "
                         "without --ckpt_path")


def after_parse(config) -> dict:
    """The model options as given, before Lightning replaces them with --ckpt_path's; a bad --ckpt_path fails here.

    Args:
        config: LightningCLI's parsed config (with or without a subcommand).
    """
    config = config[config.subcommand] if config.get("subcommand") else config
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise InputError(f"--ckpt_path {ckpt_path}: no such file; give a .ckpt written by fit, or `last`")
        checkpoint_hparams("--ckpt_path", Path(ckpt_path))
    model = config.get("model")
    return model.as_dict() if hasattr(model, "as_dict") else dict(model or {})


def before_fit(cli, config: dict) -> None:
    """Output folders writable, the checkpoint resumable into this model; checkpoints read without code execution.

    Args:
        cli: The `TinyStoriesCLI`, with trainer, model and data module built.
        config: The fit arguments (`ckpt_path` already resolved from `last`), changed in place.
    """
    trainer = cli.trainer
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
        linked = {k: cli.model.hparams[k] for k in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")}
        same_architecture(path, checkpoint_hparams("--ckpt_path", path), {**cli.given_model, **linked})
    if config.get("weights_only") is None:
        config["weights_only"] = True  # Lightning would unpickle anything from an http(s) checkpoint by default


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
