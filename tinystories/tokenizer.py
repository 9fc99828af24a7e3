"""Tokenizers: load one (hub name or folder), or train a small byte-level BPE on any data source.

    python -m tinystories tokenizer --dataset ../shared/data/tinystories --vocab_size 4096 --out_dir tok/
    python -m tinystories fit --config configs/demo.yaml --data.tokenizer tok/

A trained tokenizer has `<unk>`, `<s>`, `</s>` at ids 0, 1, 2 like LLaMA-2's, and loads with
`AutoTokenizer.from_pretrained(out_dir)`. Byte-level BPE needs no `<unk>` at all and decodes every story exactly.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tinystories.errors import UserError, one_line
from tinystories.sources import hub_message, hub_unreachable, iter_texts, load_split

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# Files AutoTokenizer builds a tokenizer from; a folder with none of them is not a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class TokenizerError(UserError):
    """A tokenizer that cannot be used; the message names it and says what to do."""


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer with the recipe's conventions: left padding; no pad token: pad with `<unk>` and say so."""
    path = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) and not path.is_dir():
        raise TokenizerError(f"data.tokenizer {name_or_path}: no such folder; give a tokenizer folder or hub name")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TokenizerError(f"data.tokenizer {name_or_path}: no tokenizer files in this folder (tokenizer.json); "
                             "give a folder written by save_pretrained or `python -m tinystories tokenizer`")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name_or_path)
    except Exception as err:  # corrupt JSON is a ValueError, a JSON of the wrong shape a KeyError, ...
        if not path.is_dir() and hub_unreachable(err):
            local = f"a folder written by save_pretrained, e.g. by `hf download {name_or_path} --local-dir DIR`"
            raise TokenizerError(hub_message("data.tokenizer", name_or_path, local)) from None
        raise TokenizerError(f"data.tokenizer {name_or_path}: cannot be loaded ({type(err).__name__}: "
                             f"{one_line(err, 160)}); re-save it with save_pretrained or give another one") from None
    if not tokenizer.is_fast:
        raise TokenizerError(f"data.tokenizer {name_or_path}: needs a fast tokenizer (tokenizer.json)")
    if tokenizer.eos_token_id is None:
        raise TokenizerError(f"data.tokenizer {name_or_path}: has no EOS token; stories must end with one")
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise TokenizerError(f"data.tokenizer {name_or_path}: has neither a pad nor an unk token to pad with; add "
                                 "one (tokenizer.add_special_tokens({'pad_token': '<pad>'}), then save_pretrained)")
        # Which id pads does not change training: pads are masked out of attention and loss. LLaMA-2's has no pad.
        print(f"data.tokenizer {name_or_path}: no pad token; padding with its unk token {tokenizer.unk_token!r}")
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    tokenizer.sentencepiece_model = sentencepiece_model(tokenizer)
    return tokenizer


def sentencepiece_model(tokenizer: PreTrainedTokenizerBase) -> Optional[bytes]:
    """The SentencePiece `tokenizer.model` a tokenizer was loaded with (LLaMA-2's), or None. The fast tokenizer does
    not need it, but other tools rebuild the tokenizer from it: llama.cpp's converter, and our GGUF export, take the
    merge scores from it (tokenizer.json has none)."""
    path = tokenizer.init_kwargs.get("vocab_file")
    if path and Path(path).name == "tokenizer.model" and Path(path).is_file():
        return Path(path).read_bytes()
    return None


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and save it to `out_dir` atomically (a folder appears whole or not)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise TokenizerError(f"vocab_size {vocab_size}: a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>",
        padding_side="left", model_max_length=2048,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(out_dir)
    except OSError:  # another process (a DDP rank) finished first; its tokenizer is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """UTF-8 bytes each token stands for (0 for special tokens), for bits per byte.

    Metaspace tokenizers (LLaMA-2) count `▁` as the space it encodes, including the one the tokenizer adds
    before a story's first word, which over-counts one byte per story (about 0.1% on TinyStories).
    """
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    byte_level = "ByteLevel" in json.dumps(decoder)
    byte_of = {c: 1 for c in bytes_to_unicode().values()}
    special = set(tokenizer.all_special_ids)
    sizes = [0] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i in special or i >= len(sizes):
            continue
        if byte_level:
            sizes[i] = sum(byte_of.get(c, len(c.encode())) for c in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            sizes[i] = 1  # SentencePiece byte fallback
        else:
            sizes[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return sizes


def main(
    *,
    dataset: str,
    out_dir: Path,
    vocab_size: int = 4096,
    split: str = "train",
    synthetic_stories: int = 20_000,
) -> None:
    """Train a byte-level BPE tokenizer on a data source and save it as a Hugging Face tokenizer folder.

    Args:
        dataset: Data source: a hub data set name, a local folder (train.txt/.jsonl/.parquet or save_to_disk),
            or `synthetic`.
        out_dir: Folder to write (must not exist yet); load it with `AutoTokenizer.from_pretrained(out_dir)`.
        vocab_size: Number of tokens, the 3 special tokens and 256 bytes included.
        split: Split to train on, in datasets split syntax (e.g. `train[:10%]`).
        synthetic_stories: Number of training stories when `dataset` is `synthetic`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"--out_dir {out_dir} already exists; choose a new folder (nothing was written)")
    texts = load_split(dataset, split, synthetic_stories)
    tokenizer = train_bpe(iter_texts(texts), vocab_size, out_dir)
    print(f"Trained a {len(tokenizer)}-token BPE on {len(texts):,} stories of {dataset}; saved to {out_dir}")


def cached_bpe(dataset: str, split: str, vocab_size: int, synthetic_stories: int, folder: Path) -> Optional[Path]:
    """Train (once) the tokenizer for a data source into `folder`, unless it is already there."""
    if not (folder / "tokenizer.json").is_file():
        print(f"Training a {vocab_size}-token BPE tokenizer on {dataset} ({split}) into {folder} ...")
        train_bpe(iter_texts(load_split(dataset, split, synthetic_stories)), vocab_size, folder)
    return folder
