"""The data module: stories from any source -> token ids (cached once) -> left-padded or packed batches.

    dm = TinyStoriesData(dataset="../shared/data/tinystories", tokenizer="../shared/data/llama2-tokenizer")
    dm.prepare_data(); dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # input_ids, attention_mask, position_ids, labels, num_bytes

Each story is tokenized without special tokens, cut to its last `max_length - 1` tokens and ended with EOS.
`prepare_data` writes the token ids to `<cache_dir>/tokenized/<hash>/` (hash of source, tokenizer and options)
as memory-mapped Arrow; `setup` only loads them, so a second run starts without re-tokenizing.
"""

import hashlib
import json
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from filelock import FileLock
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from tinystories.errors import UserError
from tinystories.instruct import INSTRUCT_SEED, first_uses, instruct_split
from tinystories.synthetic_instruct import INSTRUCT_VERSION
from tinystories.sampling import ResumableSampler
from tinystories.sources import load_split, source_id
from tinystories.tokenizer import cached_bpe, load_tokenizer, token_bytes

CACHE_FORMAT = 3  # bump when the cached columns change
INSTRUCT_FORMAT = 2  # bump when the columns of instruct data change (2: word_uses), leaving plain caches valid
MAP_BATCH = 1000  # stories per tokenizer call; packing keeps at most one partial block per such batch


def default_cache_dir() -> Path:
    if "TINYSTORIES_CACHE" in os.environ:
        return Path(os.environ["TINYSTORIES_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinystories"


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TinyStoriesData(LightningDataModule):
    def __init__(
        self,
        dataset: str = "synthetic",
        tokenizer: Optional[str] = None,
        train_split: str = "train",
        val_split: str = "validation",
        max_length: int = 2048,
        batch_size: int = 4,
        packing: bool = False,
        group_by_length: bool = False,
        tokenizer_vocab_size: int = 4096,
        synthetic_stories: int = 20_000,
        num_workers: int = 0,
        num_proc: Optional[int] = None,
        cache_dir: Optional[str] = None,
        instruct: Optional[Literal["records", "derive"]] = None,
        loss_on: Literal["all", "story"] = "all",
        word_weight: float = 1.0,
        test_split: Optional[str] = None,
    ):
        """Where stories come from and how they are batched.

        Args:
            dataset: Stories: a hub data set name, a local folder saved with `save_to_disk`, a local folder with
                `train.*` and `valid.*` (`.txt` in the TinyStories release format, `.jsonl`, `.json`, `.parquet`
                with a `text` field), or `synthetic` (a built-in seeded generator, no download).
            tokenizer: A hub name or local folder for `AutoTokenizer.from_pretrained`, or a `.ckpt` (the tokenizer
                it carries). `null` trains a byte-level BPE of `tokenizer_vocab_size` tokens on `train_split` of
                `dataset` on first use and caches it (with `model.init_from`: that model's tokenizer).
            train_split: Training split in datasets split syntax, e.g. `train[:10%]`.
            val_split: Validation split, e.g. `validation`.
            max_length: Most tokens per sample: unpacked, a story keeps its last `max_length - 1` tokens, then
                EOS; packed, the block length.
            batch_size: Samples per device per step.
            packing: Join training stories (each ending in EOS) and cut them into blocks of `max_length` tokens: no
                padding, attention crosses story boundaries. Off: one story per sample, left-padded to the batch's
                longest. Validation is never packed.
            group_by_length: Unpacked only: batch training stories of similar length (shuffle, cut into groups of
                50 batches, sort each group by length), so batches carry less padding; still one pass over every
                story per epoch in a seeded order.
            tokenizer_vocab_size: Vocabulary size of the tokenizer trained when `tokenizer` is null.
            synthetic_stories: Training stories generated when `dataset` is `synthetic` (validation gets 1/20).
            num_workers: DataLoader worker processes.
            num_proc: Processes for tokenizing; null uses every core for large splits.
            cache_dir: Where tokenized data and trained tokenizers go; default `$TINYSTORIES_CACHE` or
                `~/.cache/tinystories`.
            instruct: TinyStories-Instruct (`tinystories/instruct.py`): `records` when the stories are instruct
                records already (the release files), `derive` to make records from plain stories, with headers true
                of each story; null for plain stories. A record longer than `max_length` keeps its header and the
                start of its story.
            loss_on: With `instruct`: train on `all` tokens (as the paper did), or on the `story` only, the header
                masked out of the loss and of `val/bpb`.
            word_weight: With `instruct`: the training loss's weight on the token where the story first uses each
                word of its header's `Words` (1 weighs it like any token). Above 1 it stresses the instruction that
                is hardest to learn from a few records. `val/loss` and `val/bpb` stay unweighted.
            test_split: The split `python -m tinystories test` scores (test/loss, test/ppl, test/bpb), scored as
                validation is; null: val_split. A local folder's `test.*` file is split `test`.
        """
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size is {batch_size}; it must be at least 1")
        if max_length < 2:
            raise UserError(f"data.max_length is {max_length}; it must be at least 2")
        if group_by_length and packing:
            raise UserError("data.group_by_length needs data.packing false: packed blocks all have max_length tokens")
        if loss_on == "story" and (packing or not instruct):
            raise UserError("data.loss_on story needs data.instruct (records or derive) and data.packing false: only "
                            "then does each sample have one header to mask")
        if word_weight < 0 or (word_weight != 1 and not instruct):
            raise UserError(f"data.word_weight is {word_weight}; it must be at least 0, and other than 1 only with "
                            "data.instruct (records or derive)")
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.splits: dict[str, datasets.Dataset] = {}
        self.train_sampler: Optional[ResumableSampler] = None
        self.sampler_state: Optional[dict] = None  # a checkpoint's position, until the training loader is built

    @cached_property
    def tokenizer(self):
        hp = self.hparams
        name = hp.tokenizer
        if name is None:
            key = fingerprint([source_id(hp.dataset, hp.train_split, hp.synthetic_stories), hp.tokenizer_vocab_size])
            folder = self.cache_dir / "tokenizers" / f"bpe{hp.tokenizer_vocab_size}-{key}"
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder) + ".lock"):  # DDP ranks on one machine train it once
                name = str(cached_bpe(hp.dataset, hp.train_split, hp.tokenizer_vocab_size, hp.synthetic_stories,
                                      folder))
        if Path(name).suffix == ".ckpt" and Path(name).is_file():  # a checkpoint carries its tokenizer
            from tinystories.checkpoint import tokenizer_at

            return tokenizer_at(Path(name), "data.tokenizer")
        return load_tokenizer(name)

    # Linked into the model's config by the CLI, so they are never typed twice.
    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        # LLaMA-2's tokenizer.json is 3.6 MB: serialise and hash it once, not per split and stage.
        return hashlib.sha256(self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()

    def cache_path(self, split: str) -> Path:
        hp = self.hparams
        key = fingerprint({
            "format": CACHE_FORMAT,
            "source": source_id(hp.dataset, split, hp.synthetic_stories),
            "tokenizer": self.tokenizer_fingerprint,
            "eos": self.eos_token_id,
            "max_length": hp.max_length,
            "packing": self.packed(split),
            "instruct": ([hp.instruct, hp.loss_on, INSTRUCT_SEED, INSTRUCT_VERSION, INSTRUCT_FORMAT] if hp.instruct
                         else None),
        })
        return self.cache_dir / "tokenized" / key

    def packed(self, split: str) -> bool:
        # Validation is always one story per sample, so val/bpb scores every story from its first token.
        return self.hparams.packing and split == self.hparams.train_split

    def prepare_data(self) -> None:
        for split in self.split_names():
            path = self.cache_path(split)
            if not path.is_dir():
                self.tokenize_split(split, path)

    def tokenize_split(self, split: str, path: Path) -> None:
        hp = self.hparams
        path.parent.mkdir(parents=True, exist_ok=True)
        # Stories and token ids pass through Arrow files written in batches in a scratch folder (deleted after),
        # never a Python list or an in-memory table, so memory does not grow with the corpus (2.2 GB of text for
        # TinyStoriesV2 train); `python benchmarks/data_pipeline.py` measures it.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-work-") as work:
            texts = load_split(hp.dataset, split, hp.synthetic_stories, cache_dir=work,
                               instruct=hp.instruct is not None)
            if hp.instruct:
                texts = instruct_split(texts, hp.instruct, f"data.dataset {hp.dataset} ({split})", INSTRUCT_SEED)
            num_proc = hp.num_proc if hp.num_proc is not None else (os.cpu_count() if len(texts) > 20_000 else None)
            print(f"Tokenizing {len(texts):,} stories of {hp.dataset} ({split}) into {path} ...")
            fn_kwargs = {"tokenizer": self.tokenizer, "max_length": hp.max_length, "packing": self.packed(split),
                         "sizes": np.asarray(token_bytes(self.tokenizer), dtype=np.int64),
                         "mask_header": hp.loss_on == "story"}
            columns = {"input_ids": datasets.Sequence(datasets.Value("int32")), "num_bytes": datasets.Value("int64"),
                       "prompt_tokens": datasets.Value("int32")}
            if hp.instruct:
                columns["word_uses"] = datasets.Sequence(datasets.Value("int32"))
            ids = texts.map(tokenize_batch, batched=True, batch_size=MAP_BATCH, num_proc=num_proc,
                            remove_columns=texts.column_names, fn_kwargs=fn_kwargs, desc="tokenize",
                            cache_file_name=str(Path(work) / "tokens.arrow"), features=datasets.Features(columns))
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
            ids.save_to_disk(str(tmp))
            tmp.rename(path)  # atomic: a crash mid-write leaves no half cache behind

    def split_names(self) -> list[str]:
        names = [self.hparams.train_split, self.hparams.val_split]
        return names + [self.hparams.test_split] if self.hparams.get("test_split") else names

    def setup(self, stage: str) -> None:
        for split in self.split_names():
            if split not in self.splits:
                self.splits[split] = datasets.load_from_disk(str(self.cache_path(split))).with_format("numpy")

    def train_dataloader(self) -> DataLoader:
        ds = self.splits[self.hparams.train_split]
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # `seed_everything` (the CLI's `seed_everything`) sets PL_GLOBAL_SEED; Lightning's own sampler reads it too.
        self.train_sampler = ResumableSampler(ds, self.hparams.batch_size, world_size, rank,
                                              seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
                                              lengths=story_lengths(ds) if self.hparams.group_by_length else None)
        if self.sampler_state is not None:
            self.train_sampler.load_state_dict(self.sampler_state)
            self.sampler_state = None
        return self.loader(ds, shuffle=False, sampler=self.train_sampler)  # the sampler shuffles

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader(self.hparams.get("test_split") or self.hparams.val_split)

    def val_dataloader(self, split: Optional[str] = None) -> DataLoader:
        ds = self.splits[split or self.hparams.val_split]
        # Longest stories first, so batches of similar length carry few pads (on TinyStories at batch 8: 0.5% of the
        # tokens against 37% in file order) and the largest batch comes first. The sums are the same in any order.
        ds = ds.select(np.argsort(-story_lengths(ds), kind="stable"))
        shards = (self.trainer.distributed_sampler_kwargs if self.trainer else None) or {"num_replicas": 1}
        if shards["num_replicas"] == 1:
            return self.loader(ds, shuffle=False)
        # Each story scored once over all ranks. Lightning's DistributedSampler would pad the split to a multiple of
        # the world size with repeated stories, counted twice in val/loss and val/bpb. Ranks may then run one batch
        # fewer, which is safe: validation has no per-batch collectives (DDP syncs buffers on the first forward only).
        if len(ds) < shards["num_replicas"]:
            raise UserError(f"data split {split or self.hparams.val_split} has {len(ds)} stories, fewer than the "
                            f"{shards['num_replicas']} processes")
        return DataLoader(ds, batch_size=self.hparams.batch_size, collate_fn=self.collate,
                          sampler=UnrepeatedDistributedSampler(ds, shuffle=False, **shards),
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def loader(self, ds: datasets.Dataset, shuffle: bool, sampler: Optional[ResumableSampler] = None) -> DataLoader:
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle, sampler=sampler,
                          collate_fn=self.collate,
                          pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(samples, self.pad_token_id, self.hparams.word_weight)

    def state_dict(self) -> dict:
        state = {"tokenizer_files": self.tokenizer_files}
        if getattr(self.tokenizer, "sentencepiece_model", None):  # LLaMA-2's tokenizer.model, 500 kB: for GGUF
            state["tokenizer_model"] = self.tokenizer.sentencepiece_model
        if self.train_sampler is not None and self.trainer is not None:
            # Batches of this epoch the trainer has finished (optimizer step included), not what the loader has
            # handed out: it runs ahead by Lightning's prefetch and by its workers'.
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            state["sampler"] = self.train_sampler.state_dict(batches)
        return state

    @cached_property
    def tokenizer_files(self) -> dict[str, str]:
        """The tokenizer's files as text, serialised once and saved in every checkpoint, so a checkpoint alone can be
        decoded (a 4k-token BPE's tokenizer.json is 266 kB, LLaMA-2's 3.6 MB, against about 235 MB of weights and
        AdamW state in a checkpoint of the 19.5M model).

        Lightning stores this under `checkpoint["TinyStoriesData"]`; `generate` and `export` rebuild the tokenizer
        from it, as the folder it came from may be a cache that is gone. A SentencePiece `tokenizer.model` (binary)
        is saved beside it as `tokenizer_model`: the fast tokenizer does not need it, GGUF export does.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            files = {}
            for path in sorted(Path(tmp).iterdir()):
                try:
                    files[path.name] = path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue
        return files

    def load_state_dict(self, state_dict: dict) -> None:
        # On resume the data module already has its tokenizer from `data.tokenizer`; the copy is for readers.
        # Lightning calls this before the trainer first asks for the training loader (even when the model's
        # `configure_optimizers` reads `trainer.estimated_stepping_batches`), so the loader starts where it stopped.
        self.sampler_state = state_dict.get("sampler")  # absent when saved outside fit
        if self.train_sampler is not None and self.sampler_state is not None:
            # Strategies that restore after setup (FSDP, DeepSpeed) built the loader first; its iterator has not
            # drawn from the sampler yet with num_workers 0 (untested here: CPU tests run single process and DDP).
            self.train_sampler.load_state_dict(self.sampler_state)
            self.sampler_state = None


def story_lengths(ds: datasets.Dataset) -> np.ndarray:
    """Tokens per sample, read from the Arrow list offsets without loading the ids."""
    return pc.list_value_length(ds.with_format("arrow")[:]["input_ids"]).to_numpy()


def tokenize_batch(batch, tokenizer, max_length: int, packing: bool, sizes: np.ndarray, mask_header: bool = False):
    instruct = "header" in batch
    encoded = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=instruct)
    ids = encoded["input_ids"]
    eos = [tokenizer.eos_token_id]
    prompt = [0] * len(ids)
    if instruct:  # header and story tokenized apart, as generation sees the header alone
        heads = tokenizer(batch["header"], add_special_tokens=False)["input_ids"]
        # The token (counted in the record) where the story first uses each requested word: `data.word_weight`.
        uses = [[len(h) + token_at(offsets, c) for c in first_uses(story, words)]
                for h, offsets, story, words in zip(heads, encoded["offset_mapping"], batch["text"],
                                                    batch.get("words") or [[]] * len(ids))]
        ids = [h + x for h, x in zip(heads, ids)]
        prompt = [len(h) if mask_header else 0 for h in heads]
    # Packed stories may span blocks, so only the one-story-per-sample path cuts them.
    if packing:
        if instruct:  # where each record starts in the joined stream
            starts = np.cumsum([0] + [len(x) + 1 for x in ids[:-1]])
        flat = np.concatenate([np.asarray(x + eos, dtype=np.int64) for x in ids])
        ids = [flat[i:i + max_length] for i in range(0, len(flat), max_length)]
        if instruct:  # uses in the joined stream, then in each block, kept where the header is in that block
            where = np.concatenate([np.asarray(u, dtype=np.int64) + start for u, start in zip(uses, starts)])
            header_block = np.concatenate([np.full(len(u), start // max_length) for u, start in zip(uses, starts)])
            where = where[where // max_length == header_block]
            uses = [(where[(where >= i) & (where < i + max_length)] - i).tolist()
                    for i in range(0, len(flat), max_length)]
        if len(ids[-1]) < 2:
            ids.pop()  # a one-token tail predicts nothing; other partial blocks get left-padded
        prompt = [0] * len(ids)
    elif instruct:
        ids = [x[:max_length - 1] + eos for x in ids]  # the header stays; a long story loses its end
        uses = [[p for p in u if p < max_length - 1] for u in uses]
    else:
        ids = [x[-(max_length - 1):] + eos for x in ids]  # the recipe's cut: a long story keeps its end
    # Bytes of the text the targets cover (every token but the first of a sample, and no masked header token): the
    # bpb denominator.
    num_bytes = [int(sizes[np.asarray(x[max(1, p):], dtype=np.int64)].sum()) for x, p in zip(ids, prompt)]
    columns = {"input_ids": ids, "num_bytes": num_bytes, "prompt_tokens": prompt}
    if instruct:
        columns["word_uses"] = uses[:len(ids)]
    return columns


def token_at(offsets: list[tuple[int, int]], char: int) -> int:
    """The index of the token whose characters span `char` (a byte-level token may start with the space before)."""
    return next((i for i, (_, end) in enumerate(offsets) if end > char), len(offsets) - 1)


def collate(samples: list[dict], pad_token_id: int, word_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Left-pad to the longest sample: mask 0 and labels -100 on pads, positions counting from the first token;
    `padded` (a Python bool, known without looking at a tensor) says whether any row has a pad.

    With a `word_weight` other than 1, `loss_weights` holds it on each token in `word_uses` (1 elsewhere).
    """
    longest = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[row, longest - n:] = torch.as_tensor(s["input_ids"], dtype=torch.long)
        attention_mask[row, longest - n:] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    for row, s in enumerate(samples):  # an instruct header trained with `loss_on: story` carries no loss
        if prompt := int(s.get("prompt_tokens", 0)):
            start = longest - len(s["input_ids"])
            labels[row, start:start + prompt] = -100
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    num_bytes = torch.tensor([int(s["num_bytes"]) for s in samples], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
             "labels": labels, "num_bytes": num_bytes,
             "padded": any(len(s["input_ids"]) < longest for s in samples)}
    if word_weight != 1 and "word_uses" in samples[0]:
        weights = torch.ones(input_ids.shape, dtype=torch.float32)
        for row, s in enumerate(samples):
            start = longest - len(s["input_ids"])
            weights[row, start + torch.as_tensor(s["word_uses"], dtype=torch.long)] = word_weight
        batch["loss_weights"] = weights
    return batch
