"""What `--help` says: Lightning's texts replaced where this project does otherwise, and readable types.

    parser = ArgumentParser(formatter_class=HelpFormatter)   # every verb's parser (cli.py, __main__.py)
    rewrite(parser, "fit")                                   # after LightningCLI has added its options

Lightning's own help describes plain Lightning: `--ckpt_path last` as "the previous trainer.fit call", `--weights_only`
defaulting to None, a `'32-true'` precision, a `checkpoint.dirpath` of None that "does not save anything". Here each
of those is otherwise (tinystories/cli.py, tinystories/checks.py), so the help says what happens.
"""

import re

from jsonargparse import DefaultHelpFormatter

# Option texts by destination; a verb's own entry (`fit:ckpt_path`) wins over the shared one.
OPTIONS = {
    "fit:ckpt_path": "Resume a run from this checkpoint: its weights, optimizer, schedule, step and data order. A "
                     ".ckpt path, or `last`: looked up on disk, in the run named by --run "
                     "(lightning_logs/RUN/checkpoints/last.ckpt), else beside --config when that is a run's saved "
                     "config.yaml, else the newest under lightning_logs/. To start from trained weights with a fresh "
                     "optimizer and schedule, use model.init_from instead.",
    "ckpt_path": "The checkpoint to score: a .ckpt path, or `last` (looked up as for fit: the run named by --run, "
                 "else beside --config, else the newest under lightning_logs/). Its model options replace the "
                 "config's, and with data.tokenizer null its own tokenizer is used. Null scores the model the config "
                 "builds, untrained.",
    "weights_only": "Read --ckpt_path with torch.load(weights_only=True), so nothing in it is executed; null (the "
                    "default) means true here. Set false only for a checkpoint you trust that holds pickled objects.",
    "trainer.precision": "Numerical precision: 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true or 64-true. Null "
                         "(the default) picks one for the hardware and fit prints which and why: bf16-mixed on a GPU "
                         "from sm80, 16-mixed on older ones; on a CPU bf16-mixed where bf16 is fast (AMX, or AVX-512 "
                         "bf16 where a short probe measures it), else 32-true. The saved config.yaml keeps null.",
    "checkpoint.dirpath": "Folder for the checkpoints (the best by val/loss and last.ckpt); null: checkpoints/ in the "
                          "run's folder (lightning_logs/RUN or lightning_logs/version_N).",
    "checkpoint.filename": "Name of the best checkpoints, metrics filled in: the default writes "
                           "step=1000-val_loss=1.2345.ckpt (last.ckpt is written beside them).",
    "checkpoint.monitor": "The metric the best checkpoints are chosen by (val/loss, lower is better: checkpoint.mode).",
}
# Group titles that Lightning takes from the first lines of its docstrings, some cut mid-sentence.
GROUPS = {
    "checkpoint": "Keep the best checkpoints by val/loss, and last.ckpt at each validation",
    "last_checkpoint": "Write last.ckpt every every_n_train_steps optimizer steps too, validated or not, so a crash "
                       "loses at most that many steps",
    "lr_monitor": "Log the learning rates at each step",
    "fit": "What fit starts from",
    "validate": "What validate scores",
    "test": "What test scores",
}
# jsonargparse's spelling of some types, and what a reader understands.
TYPES = {
    "Union[str, list[str], null]": "str, repeatable",
    "Union[str, Path, null]": "Optional[str]",
}


def readable_type(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)  # <class 'Path'> -> Path
    text = TYPES.get(text, text)
    return text.replace("Path", "str")  # a path is typed as text


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter with readable types; precision shows its choices in the text, not as a union."""

    def _get_type_str(self, action):
        if action.dest == "trainer.precision":
            return "Optional[str]"
        text = super()._get_type_str(action)
        return None if text is None else readable_type(text)


def rewrite(parser, verb: str) -> None:
    """Replace Lightning's help texts and group titles in the parser of `verb` (fit, validate, test)."""
    for action in parser._actions:
        text = OPTIONS.get(f"{verb}:{action.dest}") or OPTIONS.get(action.dest)
        if text is not None:
            action.help = text
    for name, group in parser.groups.items():
        title = GROUPS.get(name)
        if title is not None:
            group.title = title
