"""Checkpoints in and out: every reader of a `.ckpt` or an exported folder goes through here.

    checkpoint = read("last.ckpt")                       # a dict; a truncated or foreign file is a UserError
    saved = hparams("last.ckpt")                         # the hyperparameters only, without reading the tensors
    same_architecture("last.ckpt", saved["architecture"], expected)   # a one-line error naming every difference
    loaded = load("last.ckpt")                           # or an exported folder: loaded.model, loaded.tokenizer
    Trainer(plugins=[AtomicCheckpointIO()])              # writes: a crash mid-write leaves the old file intact

Checkpoints are read with `weights_only=True`, so nothing in them is executed; `hparams` maps the file (`mmap=True`)
and reads only the pickled metadata, which is milliseconds even for a checkpoint of hundreds of MB.
"""

import json
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from tinystories.atomic import atomic_write
from tinystories.errors import UserError, one_line
from tinystories.model import Architecture, build_llama, mlp_size
from tinystories.tokenizer import load_tokenizer

# The architecture fields that decide the weights' shapes and meaning: weights load only into the same ones.
SHAPE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")
MODEL_PREFIX = "model."  # TinyStoriesLM keeps its LlamaForCausalLM as `self.model`


@dataclass
class Loaded:
    """A model ready to generate, its tokenizer, and the checkpoint it came from (None for an exported folder)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    checkpoint: Optional[dict] = None

    @property
    def step(self) -> Optional[int]:
        return None if self.checkpoint is None else int(self.checkpoint.get("global_step", 0))


def read(path: Path, option: str = "--ckpt_path", mmap: bool = False) -> dict:
    """A Lightning checkpoint written by `fit`, as a dict; anything else fails with one line naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file; give a .ckpt written by fit")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose directory is at the end: a cut file has none
        raise UserError(f"{option} {path}: truncated or not a checkpoint (no zip directory at its end); use another "
                        "checkpoint, e.g. an earlier one or the run's last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a damaged archive, or a pickle of objects other than tensors and plain data
        raise UserError(f"{option} {path}: not a readable checkpoint ({type(err).__name__}: {one_line(err, 160)}); "
                        "use another checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{option} {path}: not a Lightning checkpoint (no state_dict); give a .ckpt written by fit")
    if "architecture" not in (checkpoint.get("hyper_parameters") or {}):
        raise UserError(f"{option} {path}: not written by `python -m tinystories fit` (no model.architecture in its "
                        "hyperparameters); give a checkpoint of this project")
    return checkpoint


def hparams(path: Path, option: str = "--ckpt_path") -> dict:
    """The model's hyperparameters saved in a checkpoint (`architecture`, `optimization`, `compile`)."""
    return dict(read(path, option, mmap=True)["hyper_parameters"])


def shape_of(architecture: dict) -> dict:
    """The `SHAPE` fields of an architecture, `intermediate_size: null` resolved to the width it stands for."""
    out = {k: architecture[k] for k in SHAPE if k in architecture}
    if "intermediate_size" in out and not out["intermediate_size"] and architecture.get("hidden_size"):
        out["intermediate_size"] = mlp_size(architecture["hidden_size"])
    return out


def same_architecture(path: Path, saved: dict, expected: dict, option: str = "--ckpt_path", advice: str = "") -> None:
    """Fail, naming every differing field, unless the saved architecture and tokenizer ids are `expected`."""
    saved, expected = shape_of(saved), shape_of(expected)
    differ = [f"{k} {saved[k]} (config: {expected[k]})" for k in SHAPE
              if k in saved and k in expected and saved[k] != expected[k]]
    if differ:
        advice = advice or ("resume with the run's own config (--config lightning_logs/RUN/config.yaml) and "
                            "tokenizer, or start a new run without --ckpt_path")
        raise UserError(f"{option} {path}: was trained with {', '.join(differ)}; {advice}")


def architecture(checkpoint: dict) -> Architecture:
    names = {f.name for f in fields(Architecture)}
    return Architecture(**{k: v for k, v in checkpoint["hyper_parameters"]["architecture"].items() if k in names})


def model_of(checkpoint: dict) -> PreTrainedModel:
    """The checkpoint's `LlamaForCausalLM`, with its weights, in eval mode."""
    model = build_llama(architecture(checkpoint))
    weights = {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def tokenizer_of(checkpoint: dict, path: Path, option: str = "--ckpt_path") -> PreTrainedTokenizerBase:
    """The tokenizer every checkpoint carries (`TinyStoriesData.state_dict`), so it needs no other file."""
    data = checkpoint.get("TinyStoriesData") or {}
    files = data.get("tokenizer_files")
    if not files:
        raise UserError(f"{option} {path}: holds no tokenizer; give a checkpoint written by fit")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        if data.get("tokenizer_model"):
            (Path(tmp) / "tokenizer.model").write_bytes(data["tokenizer_model"])
        return load_tokenizer(tmp)  # reads tokenizer.model into `sentencepiece_model` while it is there


def architecture_of(path: Path, option: str) -> dict:
    """The architecture of a `.ckpt` (its hyperparameters) or of an exported folder (its config.json)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{option} {path}: a folder without config.json; give a .ckpt file or a folder written "
                            "by `python -m tinystories export`")
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not path.exists():
        raise UserError(f"{option} {path}: no such file or folder; give a .ckpt or an exported folder")
    return hparams(path, option)["architecture"]


def weights(path: Path, option: str) -> dict:
    """The `LlamaForCausalLM` state dict of a `.ckpt` or an exported folder."""
    path = Path(path)
    if path.is_dir():
        return load(path, option=option).model.state_dict()
    state = read(path, option)["state_dict"]
    return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def tokenizer_at(path: Path, option: str) -> PreTrainedTokenizerBase:
    """The tokenizer a `.ckpt` carries, or an exported folder's."""
    path = Path(path)
    return load_tokenizer(str(path)) if path.is_dir() else tokenizer_of(read(path, option, mmap=True), path, option)


def load(path: Path, device: str = "cpu", option: str = "--ckpt_path") -> Loaded:
    """The model (eval mode, on `device`) and tokenizer of a `.ckpt` file or of a folder written by `export`."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{option} {path}: a folder without config.json; give a .ckpt file or a folder written "
                            "by `python -m tinystories export`")
        try:
            model = AutoModelForCausalLM.from_pretrained(path)
        except Exception as err:
            raise UserError(f"{option} {path}: cannot be loaded as a model ({type(err).__name__}: "
                            f"{one_line(err, 160)}); export it again") from None
        return Loaded(model.to(device).eval(), load_tokenizer(str(path)), path)
    if not path.exists():
        raise UserError(f"{option} {path}: no such file or folder; give a .ckpt or an exported folder")
    checkpoint = read(path, option)
    return Loaded(model_of(checkpoint).to(device), tokenizer_of(checkpoint, path, option), path, checkpoint)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, fsynced, then renamed into place.

    Lightning's own writer stages the file in the system temp folder; when that is another file system (a node-local
    /tmp, checkpoints on shared storage) the move is a copy over the old file, and a crash during it truncates
    `last.ckpt`. The CLI adds this writer unless `trainer.plugins` is set.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote storage: fsspec's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)
