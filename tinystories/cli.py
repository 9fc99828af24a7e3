"""The LightningCLI for `fit`, `validate`, `test` and `predict`.

    python -m tinystories fit --config configs/tinystories-20m.yaml
    python -m tinystories fit --config lightning_logs/version_3/config.yaml --ckpt_path last   # resume
    cli_main(["fit", "--config", "configs/demo.yaml", "--trainer.max_steps", "10"])            # from tests

What it adds to LightningCLI: the model's vocab size and special-token ids linked from the data module's tokenizer;
default callbacks, each of which `disable_callbacks` turns off; atomic checkpoint writes; `trainer.precision: null`
picked for the hardware; `--ckpt_path last` found on disk; errors as one line.
"""

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from tinystories import checks
from tinystories.callbacks import (PeriodicCheckpoint, ReuseFreedMemory, SampleStories, StepProgressBar,
                                   StopOnNonFiniteLoss, Throughput, ValidateAtEnd)
from tinystories.checkpoint import AtomicCheckpointIO
from tinystories.data import TinyStoriesData
from tinystories.errors import UserError
from tinystories.model import TinyStoriesLM

PROG = "python -m tinystories"
LIGHTNING_VERBS = ("fit", "validate", "test", "predict")
# bf16-mixed where a CPU has bf16 matrix units (AMX): 1.7x faster training steps there (docs/performance.md).
CPU_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
# Callbacks added without a group of options; with the groups below, what `disable_callbacks` can name.
PLAIN_CALLBACKS = {"validate_at_end": ValidateAtEnd, "reuse_freed_memory": ReuseFreedMemory,
                   "progress_bar": StepProgressBar}

# Lightning's own deprecation and summary notices, which a user can do nothing about.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
# Lightning looks for the loader's position in the loader itself; ours is in the data module's state (sampling.py).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def default_precision(accelerator: str) -> str:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if CPU_BF16 else "32-true"


class TinyStoriesCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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
        return super().init_parser(exit_on_error=False, prog=PROG, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = args if args is not None else sys.argv[1:]
            raise UserError(checks.option_error(str(err), parser, given)) from None
        # Before Lightning reads --ckpt_path (a bad file is a traceback there) and replaces the model options with
        # its hyperparameters: before_fit compares the two.
        self.given_model = checks.after_parse(self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision = default_precision(str(config.trainer.accelerator))
        if config.model.get("init_from"):  # fails here, with its own option's name, before anything reads it
            checks.init_from(config.model.init_from)
            if config.data.tokenizer is None:  # fine-tuning keeps the pretrained model's tokenizer
                config.data.tokenizer = str(config.model.init_from)
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
        if not trainer_config.get("plugins"):
            trainer_config["plugins"] = [AtomicCheckpointIO()]
        if trainer_config.get("logger") in (None, True):
            # Lightning's default logger, without the placeholder `hp_metric = -1` it writes for the hparams tab.
            root = trainer_config.get("default_root_dir") or os.getcwd()
            trainer_config["logger"] = TensorBoardLogger(root, name="lightning_logs", version=SLURMEnvironment.job_id(),
                                                         default_hp_metric=False)
        if trainer_config.get("enable_checkpointing") is False:  # Lightning refuses checkpoint callbacks then
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if trainer_config.get("logger") is False:  # and a learning-rate monitor without a logger
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return self._instantiate_trainer(trainer_config, callbacks)

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(self.find_last_checkpoint())
            print(f"Resuming from {config['ckpt_path']}")
        checks.before_fit(self, config)

    def find_last_checkpoint(self) -> Path:
        """`last.ckpt` beside the `--config` file (a run's saved config.yaml), else the newest under the logs."""
        for config_path in self.config[self.subcommand].get("config") or []:
            candidate = Path(str(config_path)).parent / "checkpoints" / "last.ckpt"
            if candidate.is_file():
                return candidate
        root = Path(self.trainer.logger.root_dir) if self.trainer.logger else Path(self.trainer.default_root_dir)
        found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"--ckpt_path last: no last.ckpt beside the config nor under {root}/; train first or give "
                            "a checkpoint path")
        return found[-1]


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> TinyStoriesCLI:
    """Parse `args` (default: the command line) and run the subcommand; `run=False` only builds the objects."""
    if not run:
        args = args[1:] if args and args[0] in LIGHTNING_VERBS else args
    # The optimizer and schedule are `model.optimization`'s: LightningCLI's own `--optimizer` would bypass them.
    return TinyStoriesCLI(TinyStoriesLM, TinyStoriesData, seed_everything_default=3407, run=run, args=args,
                          auto_configure_optimizers=False)
