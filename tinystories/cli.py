"""The LightningCLI for `fit`, `validate` and `test`.

    python -m tinystories fit --config configs/tinystories-20m.yaml --run base     # writes lightning_logs/base/
    python -m tinystories fit --config lightning_logs/base/config.yaml --ckpt_path last   # resume it, same folder
    python -m tinystories validate --config lightning_logs/base/config.yaml --ckpt_path last
    cli_main(["fit", "--config", "configs/demo.yaml", "--trainer.max_steps", "10"])        # from tests

What it adds to LightningCLI: named runs (`--run NAME`: the folder `lightning_logs/NAME`, refused when used unless
resumed); the model's vocab size and special-token ids linked from the data module's tokenizer; default callbacks,
each of which `disable_callbacks` turns off; atomic checkpoint writes; `trainer.precision: null` picked for the
hardware; `--ckpt_path last` found on disk; help texts that describe this project; errors as one line.
"""

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from tinystories import checks, precision
from tinystories.callbacks import (PeriodicCheckpoint, ReuseFreedMemory, SampleStories, StepProgressBar,
                                   StopOnNonFiniteLoss, Throughput, ValidateAtEnd)
from tinystories.checkpoint import AtomicCheckpointIO
from tinystories.data import TinyStoriesData
from tinystories.errors import UserError
from tinystories.help import HelpFormatter, rewrite
from tinystories.model import TinyStoriesLM

PROG = "python -m tinystories"
# Lightning's `predict` is left out: stories come from `generate`, which batches prompts and writes them.
LIGHTNING_VERBS = ("fit", "validate", "test")
LOGS = "lightning_logs"  # the default logger's folder under trainer.default_root_dir
RUN_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
# Callbacks added without a group of options; with the groups below, what `disable_callbacks` can name.
PLAIN_CALLBACKS = {"validate_at_end": ValidateAtEnd, "reuse_freed_memory": ReuseFreedMemory,
                   "progress_bar": StepProgressBar}

# Lightning's own deprecation and summary notices, which a user can do nothing about.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
# Lightning looks for the loader's position in the loader itself; ours is in the data module's state (sampling.py).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class SaveRunConfig(SaveConfigCallback):
    """The resolved `config.yaml` in the run's folder. A resumed `fit` replaces it (`before_fit` sets `overwrite`);
    `validate` and `test` leave a folder's config as it is, and write one only where there is none."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and not self.already_saved and self.save_to_log_dir:
            path = Path(trainer.log_dir) / self.config_filename
            if trainer.strategy.broadcast(path.is_file() if trainer.is_global_zero else False):
                self.already_saved = True  # the config of the run being scored stays
        super().setup(trainer, pl_module, stage)


def last_checkpoint(config, logs: Path) -> Path:
    """`--ckpt_path last`: last.ckpt of the run named by `--run` (or in `checkpoint.dirpath`), else beside the
    `--config` file (a run's saved config.yaml), else the newest under `logs` (the logger's folder).

    Args:
        config: The verb's parsed options.
        logs: The folder runs are written in: `lightning_logs/` under trainer.default_root_dir, or that folder
            itself without a logger.
    """
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    if dirpath or config.get("run"):
        where = Path(dirpath) if dirpath else logs / config["run"] / "checkpoints"
        if (where / "last.ckpt").is_file():
            return where / "last.ckpt"
        named = f"--checkpoint.dirpath {dirpath}" if dirpath else f"--run {config['run']}"
        raise UserError(f"--ckpt_path last: {named} has no {where / 'last.ckpt'}; train that run first (fit "
                        f"{named}) or give a checkpoint path")
    for config_path in config.get("config") or []:
        candidate = Path(str(config_path)).parent / "checkpoints" / "last.ckpt"
        if candidate.is_file():
            return candidate
    found = sorted([*logs.glob("*/checkpoints/last.ckpt"), *logs.glob("checkpoints/last.ckpt")],
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"--ckpt_path last: no last.ckpt beside the config nor under {logs}/; train first or give "
                        "a checkpoint path")
    return found[-1]


def logs_folder(config) -> Path:
    """Where the default logger writes runs (`lightning_logs/` under trainer.default_root_dir), or without a logger
    the root folder itself."""
    root = Path(config.trainer.get("default_root_dir") or os.getcwd())
    return root if config.trainer.get("logger") is False else root / LOGS


class TinyStoriesCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {verb: skip for verb, skip in LightningCLI.subcommands().items() if verb in LIGHTNING_VERBS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run", type=Optional[str], default=None,
                            help="Name of the run: its folder is lightning_logs/RUN under trainer.default_root_dir, "
                                 "holding config.yaml, the TensorBoard events and checkpoints/. fit refuses a name "
                                 "already used unless it resumes that run (--ckpt_path last); validate and test log "
                                 "into the named run's folder. Null numbers the folder (version_N).")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 2,
            "checkpoint.save_last": True,
            "checkpoint.filename": "step={step}-val_loss={val/loss:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,  # `last_checkpoint` writes the same last.ckpt, not last-v1
        })
        parser.add_lightning_class_args(PeriodicCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(SampleStories, "samples")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "nonfinite_loss")  # stop (default) or skip
        parser.add_argument("--disable_callbacks", type=list[str], default=[],
                            help="Default callbacks to leave out, by name: checkpoint, last_checkpoint, lr_monitor, "
                                 "samples, throughput, nonfinite_loss, validate_at_end, reuse_freed_memory, "
                                 "progress_bar (Lightning's own bar then shows).")
        for field in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
            parser.link_arguments(f"data.{field}", f"model.architecture.{field}", apply_on="instantiate")

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # Errors come to parse_arguments, not a usage dump; the usage names the command users type.
        return super().init_parser(exit_on_error=False, prog=PROG, formatter_class=HelpFormatter, **kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        for verb, parser in getattr(self, "_subcommand_parsers", {}).items():
            parser.prog = f"{PROG} {verb}"  # not jsonargparse's "[options] fit": there are no options before a verb
            rewrite(parser, verb)
        if not add_subcommands:
            rewrite(self.parser, "fit")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = args if args is not None else sys.argv[1:]
            raise UserError(checks.option_error(str(err), parser, given)) from None
        verb = self.config.get("subcommand")
        config = self.config[verb] if verb else self.config
        if config.get("run") is not None and not RUN_NAME.fullmatch(config.run):
            raise UserError(f"--run {config.run!r}: a run name is letters, digits, '.', '_' and '-', starting with a "
                            "letter or digit (it names the folder lightning_logs/RUN)")
        if verb in ("validate", "test") and config.get("ckpt_path") == "last":
            # Here, before Lightning reads the checkpoint's model options; fit finds it once its logger is built.
            config.ckpt_path = str(last_checkpoint(config, logs_folder(config)))
            print(f"Scoring {config.ckpt_path}")
        # Before Lightning reads --ckpt_path (a bad file is a traceback there) and replaces the model options with
        # its hyperparameters: before_fit compares the two.
        self.given_model = checks.after_parse(self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.model.get("init_from"):  # fails here, with its own option's name, before anything reads it
            checks.init_from(config.model.init_from)
            if config.data.tokenizer is None:  # fine-tuning keeps the pretrained model's tokenizer
                config.data.tokenizer = str(config.model.init_from)
        if self.subcommand in ("validate", "test") and config.get("ckpt_path") and config.data.tokenizer is None:
            config.data.tokenizer = str(config.ckpt_path)  # a checkpoint is scored with the tokenizer it carries
        known = {*self._parser(self.subcommand).callback_keys, *PLAIN_CALLBACKS}
        unknown = [name for name in config.get("disable_callbacks") or [] if name not in known]
        if unknown:
            raise UserError(f"disable_callbacks: unknown callback {', '.join(unknown)}; the default callbacks are "
                            f"{', '.join(sorted(known))}")

    def instantiate_trainer(self, **kwargs):
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        off = set(self._get(self.config_init, "disable_callbacks", default=[]) or [])
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys
                     if key not in off]
        given = trainer_config.get("callbacks") or []
        has_bar = any(isinstance(c, ProgressBar) for c in (given if isinstance(given, list) else [given]))
        no_bar = has_bar or trainer_config.get("enable_progress_bar") is False
        for name, callback in PLAIN_CALLBACKS.items():
            if name not in off and not (name == "progress_bar" and no_bar):
                callbacks.insert(0, callback())
        if trainer_config.get("precision") is None:  # resolved here, so the saved config.yaml keeps null
            arch = self.model.model.config
            chosen = precision.pick(str(trainer_config.get("accelerator")), arch.hidden_size, arch.intermediate_size)
            trainer_config["precision"] = chosen.precision
            rank_zero_only(print)(f"precision: {chosen.precision} ({chosen.reason})")
        if not trainer_config.get("plugins"):
            trainer_config["plugins"] = [AtomicCheckpointIO()]
        run = self._get(self.config_init, "run")
        if run is not None and trainer_config.get("logger") not in (None, True):
            raise UserError(f"--run {run} names the default logger's folder; with --trainer.logger "
                            f"{'false' if trainer_config.get('logger') is False else 'set'}, leave --run out "
                            "(without a logger the run's folder is trainer.default_root_dir)")
        if trainer_config.get("logger") in (None, True):
            # Lightning's default logger, without the placeholder `hp_metric = -1` it writes for the hparams tab.
            root = trainer_config.get("default_root_dir") or os.getcwd()
            trainer_config["logger"] = TensorBoardLogger(root, name=LOGS, version=run or SLURMEnvironment.job_id(),
                                                         default_hp_metric=False)
        if trainer_config.get("enable_checkpointing") is False:  # Lightning refuses checkpoint callbacks then
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if trainer_config.get("logger") is False:  # and a learning-rate monitor without a logger
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        trainer = self._instantiate_trainer(trainer_config, callbacks)
        if trainer.logger is not None:  # hparams.yaml and TensorBoard's hparams: the precision this run resolved to
            trainer.logger.log_hyperparams({"trainer.precision": trainer_config["precision"]})
        return trainer

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            logs = Path(self.trainer.logger.root_dir) if self.trainer.logger else Path(self.trainer.default_root_dir)
            config["ckpt_path"] = str(last_checkpoint(self.config[self.subcommand], logs))
            print(f"Resuming from {config['ckpt_path']}")
        checks.before_fit(self, config)
        checks.new_run(self.trainer, config.get("run"), resuming=bool(config.get("ckpt_path")))
        if config.get("ckpt_path"):  # a resumed run goes on in its folder, beside its checkpoints
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            for callback in self.trainer.callbacks:
                if isinstance(callback, SaveConfigCallback):
                    callback.overwrite = True  # its config.yaml is replaced by the one it goes on with

    def before_validate(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # as for fit: nothing in a checkpoint is executed

    before_test = before_validate


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> TinyStoriesCLI:
    """Parse `args` (default: the command line) and run the subcommand; `run=False` only builds the objects."""
    if not run:
        args = args[1:] if args and args[0] in LIGHTNING_VERBS else args
    # The optimizer and schedule are `model.optimization`'s: LightningCLI's own `--optimizer` would bypass them.
    return TinyStoriesCLI(TinyStoriesLM, TinyStoriesData, seed_everything_default=3407, run=run, args=args,
                          auto_configure_optimizers=False, save_config_callback=SaveRunConfig)
