"""Where stories come from: one `datasets.Dataset` with a `text` column per split, whatever the source.

    from tinystories.sources import load_split, source_id
    ds = load_split("../shared/data/tinystories", "train[:10%]")   # folder of train.txt / valid.txt
    ds = load_split("noanabeshima/TinyStoriesV2", "validation")     # hub data set
    ds = load_split("synthetic", "train", synthetic_stories=20_000)  # built-in generator, no download

`source_id` names what a split would read (path, size and mtime of local files; the hub name; the generator's
seed and version) so caches built from it are invalidated when the source changes.
"""

import json
import re
from pathlib import Path

import datasets

from tinystories.errors import UserError

from tinystories.synthetic import SYNTHETIC_VERSION, generate_stories

SYNTHETIC = "synthetic"
EOT_LINE = "<|endoftext|>"
FILE_EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
# Local folders name their validation file valid.* (TinyStories release) or validation.* (HF convention).
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("valid", "validation"), "valid": ("valid", "validation")}
SYNTHETIC_VAL_FRACTION = 20  # validation gets 1/20 as many stories as train, from its own seed
SPLIT_RE = re.compile(r"^(\w+)(\[.*\])?$")


class DataSourceError(UserError):
    """Bad input in a data source; the message names the file or option and what to do."""


def parse_split(split: str) -> str:
    match = SPLIT_RE.match(split.strip())
    if not match:
        raise DataSourceError(f"data split {split!r}: use datasets split syntax, e.g. 'train' or 'train[:10%]'")
    return match.group(1)


def looks_like_path(dataset: str) -> bool:
    # Hub names look like relative paths ("user/name"): a name is local if it exists or is plainly a path.
    return dataset.startswith((".", "/", "~")) or Path(dataset).expanduser().exists()


def local_file(folder: Path, split: str) -> Path:
    name = parse_split(split)
    stems = SPLIT_FILE_STEMS.get(name, (name,))
    found = [folder / f"{s}{ext}" for s in stems for ext in FILE_EXTENSIONS if (folder / f"{s}{ext}").is_file()]
    if not found:
        wanted = ", ".join(f"{s}.{{txt,jsonl,json,parquet}}" for s in stems)
        raise DataSourceError(f"data.dataset {folder}: no file for split {name!r}; expected one of {wanted}")
    return found[0]


def local_folder(dataset: str) -> Path:
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        raise DataSourceError(f"data.dataset {dataset}: no such folder; give a local folder or a hub name")
    return folder


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def source_id(dataset: str, split: str, synthetic_stories: int = 0) -> dict:
    """What `load_split(dataset, split)` reads, as a JSON-able dict for cache keys."""
    if dataset == SYNTHETIC:
        return {"synthetic": SYNTHETIC_VERSION, "stories": synthetic_stories, "split": split}
    if not looks_like_path(dataset):
        return {"hub": dataset, "split": split}
    folder = local_folder(dataset).resolve()
    files = sorted(folder.rglob("*")) if is_saved_dataset(folder) else [local_file(folder, split)]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return {"local": str(folder), "files": stats, "split": split}


def load_split(
    dataset: str, split: str, synthetic_stories: int = 20_000, cache_dir: str | Path | None = None,
    instruct: bool = False,
) -> datasets.Dataset:
    """The split of `dataset` as a Dataset with a `text` column (split syntax like `train[:10%]` allowed).

    Synthetic stories and local `.txt`/`.jsonl`/`.parquet` files are written to memory-mapped Arrow files, in
    batches, under `cache_dir` (default: datasets' cache, `$HF_DATASETS_CACHE`), so memory does not grow with the
    corpus. Hub data sets always use datasets' cache, where their downloads are kept. With `instruct`, synthetic
    stories come with a `facts` column (JSON: features and a summary their generator knows to be true).
    """
    cache_dir = None if cache_dir is None else str(cache_dir)
    if dataset == SYNTHETIC:
        ds = synthetic_split(parse_split(split), synthetic_stories, cache_dir, instruct)
    elif looks_like_path(dataset):
        folder = local_folder(dataset)
        if is_saved_dataset(folder):
            ds = saved_split(folder, split)
        else:
            ds = file_split(local_file(folder, split), cache_dir)
    else:
        try:
            ds = datasets.load_dataset(dataset, split=split)
        except Exception as err:
            if hub_unreachable(err):
                raise DataSourceError(hub_message("data.dataset", dataset, "a folder of train/valid .txt, .jsonl or "
                                                  ".parquet files, or one saved with save_to_disk")) from None
            raise
        return checked(ds, f"{dataset} split {split!r}")
    return checked(select(ds, split), f"{dataset} split {split!r}")


def hub_unreachable(err: BaseException) -> bool:
    """Whether a hub library's error says the hub could not be reached (HF_HUB_OFFLINE, no network), as opposed to
    a name that does not exist or a file that is broken."""
    text = str(err).lower()
    return (type(err).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError")
            or "couldn't connect to" in text or ("couldn't reach" in text and "on the hub" in text))


def hub_message(option: str, name: str, local: str) -> str:
    """One line for a hub name that could not be fetched: why, and how to give a local copy instead."""
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no network or the hub is down"
    return (f"{option} {name}: the Hugging Face hub could not be reached ({why}) and the hub cache has no copy; give "
            f"a local copy instead ({local}), or run once with the network to cache it")


def checked(ds: datasets.Dataset, what: str) -> datasets.Dataset:
    if "text" not in ds.column_names:
        raise DataSourceError(f"{what}: no 'text' field (columns: {ds.column_names}); stories must be in 'text'")
    if len(ds) == 0:
        raise DataSourceError(f"{what}: no stories; check the file or the split range")
    return ds


def select(ds: datasets.Dataset, split: str) -> datasets.Dataset:
    """Apply the slice of `split` (`train[:10%]`, `valid[100:200]`) to a whole split."""
    name = parse_split(split)
    if split.strip() == name:
        return ds
    (instruction,) = datasets.ReadInstruction.from_spec(split).to_absolute({name: len(ds)})
    return ds.select(range(instruction.from_, instruction.to))


def synthetic_split(name: str, stories: int, cache_dir: str | None = None, instruct: bool = False) -> datasets.Dataset:
    # Train and validation come from different seeds. Written to Arrow in batches, not held in a list: 500k
    # stories are 360 MB of text (a list of them peaked at 3.6x the memory of 50k, with the tokenizer's output).
    if name == "train":
        n, seed = stories, 0
    elif name in ("validation", "valid", "test"):
        n, seed = max(1, stories // SYNTHETIC_VAL_FRACTION), 1
    else:
        raise DataSourceError(f"data.dataset synthetic: unknown split {name!r}; use train or validation")
    if instruct:
        return datasets.Dataset.from_generator(
            synthetic_instruct_rows, gen_kwargs={"n": n, "seed": seed, "version": instruct_version()},
            cache_dir=cache_dir, features=datasets.Features({"text": datasets.Value("string"),
                                                             "facts": datasets.Value("string")}))
    return datasets.Dataset.from_generator(
        synthetic_rows, gen_kwargs={"n": n, "seed": seed, "version": SYNTHETIC_VERSION}, cache_dir=cache_dir,
        features=datasets.Features({"text": datasets.Value("string")}),
    )


def synthetic_rows(n: int, seed: int, version: int = SYNTHETIC_VERSION):
    # `version` is in the arguments only so datasets' cache of the generator's output is keyed on it.
    for text in generate_stories(n, seed=seed):
        yield {"text": text}


def instruct_version() -> list[int]:
    from tinystories.synthetic_instruct import INSTRUCT_VERSION

    return [SYNTHETIC_VERSION, INSTRUCT_VERSION]


def synthetic_instruct_rows(n: int, seed: int, version: list[int]):
    from tinystories.synthetic import generate_instruct_stories

    for text, facts in generate_instruct_stories(n, seed=seed):
        yield {"text": text, "facts": json.dumps(facts)}


def saved_split(folder: Path, split: str) -> datasets.Dataset:
    saved = datasets.load_from_disk(str(folder))
    if isinstance(saved, datasets.DatasetDict):
        name = parse_split(split)
        if name not in saved:
            raise DataSourceError(f"data.dataset {folder}: no split {name!r}; it has {list(saved)}")
        return saved[name]
    return saved


def file_split(path: Path, cache_dir: str | None = None) -> datasets.Dataset:
    stat = path.stat()
    if stat.st_size == 0:
        raise DataSourceError(f"{path}: empty file (0 bytes); put stories in it or point data.dataset elsewhere")
    if path.suffix == ".txt":
        # A generator keeps memory flat on multi-GB release files; size and mtime in gen_kwargs refresh
        # datasets' cache when the file changes.
        try:
            return datasets.Dataset.from_generator(
                read_release_txt, gen_kwargs={"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime_ns},
                cache_dir=cache_dir,
            )
        except datasets.exceptions.DatasetGenerationError as err:  # datasets wraps our own message; unwrap it
            if isinstance(err.__cause__, DataSourceError):
                raise err.__cause__ from None
            if type(err.__cause__).__name__ == "SchemaInferenceError":  # the generator yielded no story at all
                raise DataSourceError(f"{path}: no stories, only blank and {EOT_LINE} lines; add stories") from None
            raise
    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as err:  # datasets wraps parser errors in generic ones; name the file instead
        cause = err.__cause__ or err
        raise DataSourceError(f"{path}: could not be read as {builder} ({type(cause).__name__}: {cause})") from err


def read_release_txt(path: str, size: int = 0, mtime: int = 0):
    """Stories of a TinyStories release file: text separated by lines that read `<|endoftext|>`."""
    story: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        try:
            for line in f:
                if line.strip() == EOT_LINE:
                    if text := "".join(story).strip():
                        yield {"text": text}
                    story = []
                else:
                    story.append(line.replace("\r\n", "\n"))
        except UnicodeDecodeError as err:
            raise DataSourceError(f"{path}: not UTF-8 ({err.reason} at byte {err.start} of a block); re-encode it") from err
    if text := "".join(story).strip():
        yield {"text": text}


def iter_texts(ds: datasets.Dataset, batch_size: int = 1000):
    for batch in ds.iter(batch_size=batch_size):
        yield from batch["text"]

