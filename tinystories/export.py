"""Export a Lightning checkpoint as a Hugging Face model folder, optionally with a GGUF file, and upload it.

    python -m tinystories export --ckpt_path lightning_logs/demo/checkpoints/last.ckpt --out_dir my-model
    python -m tinystories export --ckpt_path last.ckpt --out_dir my-model --gguf      # + my-model.gguf, Modelfile
    python -m tinystories export --ckpt_path my-model --gguf --gguf_type q8_0         # GGUF for a folder exported before
    python -m tinystories export --ckpt_path my-model --push_to_hub me/tinystories-demo     # upload it as it is

The folder holds `config.json`, `model.safetensors`, the tokenizer (set to add no BOS, as the stories were trained;
LLaMA-2's with its `tokenizer.model`), `generation_config.json` (the recipe's sampling defaults) and a model card
`README.md` (tinystories/card.py); `AutoModelForCausalLM.from_pretrained("my-model")` and
`pipeline("text-generation", model="my-model")` load it, and so does `python -m tinystories generate --ckpt_path
my-model`. `--gguf` adds `<folder name>.gguf` for llama.cpp, Ollama and LM Studio and an Ollama `Modelfile`
(tinystories/gguf_file.py). An exported folder is uploaded as it is, but for its card's references to the folder's
name, which name the hub repository in the upload (the folder on disk is not changed).
"""

import shutil
import tempfile
from pathlib import Path
from typing import Literal, Optional

from tinystories import checkpoint as ckpt
from tinystories.atomic import UMASK
from tinystories.card import SAMPLING, model_card
from tinystories.checks import writable
from tinystories.errors import UserError
from tinystories.generate import generation_config
from tinystories.gguf_file import modelfile, write_gguf

def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out_dir {out_dir} exists and is not an empty folder; choose a new one (nothing was "
                        "written)")
    writable("--out_dir", out_dir)  # before the checkpoint is read and the model rebuilt


def hub_token() -> str:
    """The hub token, checked before any network call; a clear error without one."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise UserError("--push_to_hub: HF_HUB_OFFLINE is set; unset it to upload (nothing was written)")
    token = get_token()
    if token is None:
        raise UserError("--push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN "
                         "(nothing was written)")
    return token


def card_for_hub(folder: Path, repo_id: str) -> Optional[bytes]:
    """The folder's model card with the name it was written under (the folder's) replaced by the hub repository id,
    so its snippets load from the hub; None when there is no card or nothing to replace."""
    card, old = folder / "README.md", folder.resolve().name
    if not card.is_file() or old == repo_id:
        return None
    text = original = card.read_text(encoding="utf-8")
    for before, after in ((f'"{old}"', f'"{repo_id}"'), (f"\n# {old}\n", f"\n# {repo_id}\n"),
                          (f"hf download {old} ", f"hf download {repo_id} ")):
        text = text.replace(before, after)
    return None if text == original else text.encode("utf-8")


def push(folder: Path, repo_id: str, token: str, private: bool) -> str:
    """One commit of the folder's files (dot-files left out), the model card named for `repo_id`."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).as_posix().startswith("."))
    card = card_for_hub(folder, repo_id)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                                     path_or_fileobj=card if card is not None and p == folder / "README.md" else str(p))
                  for p in files]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations=operations, repo_type="model",
                                   commit_message="Upload TinyStories model exported by tinystories")
    except Exception as err:  # no network, a bad token, a repo of someone else's: one line, the export stays
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"--push_to_hub {repo_id}: upload failed ({type(err).__name__}: {first_line}); "
                         f"the export is in {folder}") from err
    return getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}")


def without_bos(tokenizer) -> None:
    """`tokenizer(text)` encodes as training did, with no BOS (LLaMA-2's adds one by default): pipelines and
    llama.cpp's converter tokenize prompts that way."""
    text = "Once upon a time"
    if tokenizer(text)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        tokenizer.add_bos_token = False
        tokenizer.add_eos_token = False
    if tokenizer(text)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise UserError("export: the tokenizer adds special tokens that add_bos_token/add_eos_token do not turn off; "
                        "save it without them (nothing was written)")


def sentencepiece_source(checkpoint: dict) -> Optional[bytes]:
    """`tokenizer.model` for a checkpoint written before checkpoints carried it: from `data.tokenizer` (a folder, a
    .ckpt, or a hub name in the hub cache or downloaded)."""
    source = str((checkpoint.get("datamodule_hyper_parameters") or {}).get("tokenizer") or "")
    path = Path(source).expanduser()
    if not source or path.suffix == ".ckpt" and not path.is_file():
        return None
    if path.is_dir():
        return (path / "tokenizer.model").read_bytes() if (path / "tokenizer.model").is_file() else None
    if path.suffix == ".ckpt":
        return (ckpt.read(path, "data.tokenizer", mmap=True).get("TinyStoriesData") or {}).get("tokenizer_model")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, "tokenizer.model")).read_bytes()
    except Exception:  # no such file in the repository, or no network
        return None


def write_folder(checkpoint: dict, ckpt_path: Path, out_dir: Path, name: str, max_new_tokens: int,
                 gguf_type: Optional[str] = None) -> int:
    """Write the export into a temporary sibling folder and rename it, so `out_dir` appears whole or not at all."""
    model = ckpt.model_of(checkpoint)
    tokenizer = ckpt.tokenizer_of(checkpoint, ckpt_path)
    without_bos(tokenizer)
    sentencepiece = tokenizer.sentencepiece_model
    if sentencepiece is None and "Metaspace" in tokenizer.backend_tokenizer.to_str():
        sentencepiece = sentencepiece_source(checkpoint)
    model.generation_config = generation_config(tokenizer, max_new_tokens, **SAMPLING)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if sentencepiece is not None:  # other converters (llama.cpp's) rebuild the tokenizer from it
            (tmp / "tokenizer.model").write_bytes(sentencepiece)
        gguf_file = f"{out_dir.name}.gguf" if gguf_type else None
        if gguf_file:
            source = (checkpoint.get("datamodule_hyper_parameters") or {}).get("tokenizer")
            write_gguf(tmp, tmp / gguf_file, gguf_type, name=name.split("/")[-1], label=ckpt_path,
                       advice=f"it is neither in the checkpoint nor at data.tokenizer {source}: put the tokenizer's "
                              "folder back there, or export without --gguf")
            (tmp / "Modelfile").write_text(modelfile(gguf_file, tmp), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(checkpoint, model, tokenizer, name, gguf_file, gguf_type),
                                       encoding="utf-8")
        for path in (tmp, *tmp.iterdir()):  # mkdtemp makes the folder private (0700); a model is to be shared
            path.chmod((0o777 if path.is_dir() else 0o666) & ~UMASK)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked before
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model.num_parameters()


def gguf_into(folder: Path, gguf_type: str, overwrite: bool) -> None:
    """Add `<folder>.gguf` and a Modelfile to a folder exported before; existing ones only with --overwrite."""
    gguf_file = f"{folder.resolve().name}.gguf"
    taken = [n for n in (gguf_file, "Modelfile") if (folder / n).exists()]
    if taken and not overwrite:
        raise UserError(f"--gguf: {folder / taken[0]} exists; pass --overwrite to replace {' and '.join(taken)} "
                        "(nothing was written)")
    writable("--ckpt_path", folder)
    write_gguf(folder, folder / gguf_file, gguf_type)
    (folder / "Modelfile").write_text(modelfile(gguf_file, folder), encoding="utf-8")
    print(f"Wrote {folder / gguf_file} ({gguf_type}, {(folder / gguf_file).stat().st_size / 1e6:.1f} MB) and "
          f"{folder / 'Modelfile'}")


def from_folder(folder: Path, out_dir: Optional[Path], repo_id: Optional[str], private: bool,
                gguf_type: Optional[str], overwrite: bool) -> None:
    """A folder written by export before: add a GGUF to it, upload it as it is, or both."""
    if out_dir is not None:
        raise UserError(f"--ckpt_path {folder}: an exported folder already; leave out --out_dir (nothing to write), "
                        "and give --gguf to add a GGUF file or --push_to_hub USER/NAME to upload it")
    if not repo_id and not gguf_type:
        raise UserError(f"--ckpt_path {folder}: an exported folder already; give --gguf to add a GGUF file, "
                        "--push_to_hub USER/NAME to upload it, or a .ckpt with --out_dir to export one")
    needed = ("config.json", "model.safetensors") + (("tokenizer.json",) if gguf_type else ())
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise UserError(f"--ckpt_path {folder}: no {' or '.join(missing)}; give a folder written by export, or a "
                        ".ckpt with --out_dir")
    token = hub_token() if repo_id else None
    if gguf_type:
        gguf_into(folder, gguf_type, overwrite)
    if repo_id:
        print(f"Uploaded {folder} to {push(folder, repo_id, token, private)}")


def main(
    *,
    ckpt_path: Path,
    out_dir: Optional[Path] = None,
    push_to_hub: Optional[str] = None,
    private: bool = False,
    max_new_tokens: int = 256,
    gguf: bool = False,
    gguf_type: Optional[Literal["f32", "f16", "bf16", "q8_0"]] = None,
    overwrite: bool = False,
) -> None:
    """Export a Lightning checkpoint as a Hugging Face model folder with a model card, optionally with a GGUF file
    for llama.cpp, Ollama and LM Studio, and optionally upload it; or add a GGUF to, or upload, a folder exported
    before.

    Args:
        ckpt_path: A Lightning checkpoint (`.ckpt`) written by `python -m tinystories fit`, or a folder written by
            export, which --push_to_hub then uploads as it is.
        out_dir: Folder to write, required with a .ckpt; it must not exist or be empty (nothing is overwritten).
        push_to_hub: A hub repository id (`user/name`) to create if needed and upload the folder to; needs a
            token (`hf auth login` or HF_TOKEN) and network. The uploaded model card names this id.
        private: Create the hub repository as private.
        max_new_tokens: Default story length written to generation_config.json (at least 1).
        gguf: Also write `<folder name>.gguf` and an Ollama `Modelfile` into the folder (docs/gguf.md).
        gguf_type: The GGUF's weight type: f16 (default), f32 (what parity is checked with), bf16 or q8_0 (about
            half of f16's size); norms stay f32. Implies --gguf.
        overwrite: With --gguf on an exported folder: replace its GGUF and Modelfile.
    """
    ckpt_path = Path(ckpt_path)
    out_dir = None if out_dir is None else Path(out_dir)
    gguf_type = gguf_type or ("f16" if gguf else None)
    if ckpt_path.is_dir():
        return from_folder(ckpt_path, out_dir, push_to_hub, private, gguf_type, overwrite)
    if not ckpt_path.is_file():
        raise UserError(f"--ckpt_path {ckpt_path}: no such checkpoint file or exported folder; give a .ckpt written "
                        "by fit")
    if out_dir is None:
        raise UserError(f"--out_dir: required to export {ckpt_path}; give a new folder (e.g. --out_dir my-model)")
    if max_new_tokens < 1:
        raise UserError(f"--max_new_tokens is {max_new_tokens}; it must be at least 1")
    check_out_dir(out_dir)
    token = hub_token() if push_to_hub else None
    checkpoint = ckpt.read(ckpt_path)
    name = push_to_hub or out_dir.name
    parameters = write_folder(checkpoint, ckpt_path, out_dir, name, max_new_tokens, gguf_type)
    print(f"Exported {parameters:,} parameters (step {checkpoint.get('global_step')}) to {out_dir}")
    if gguf_type:
        size = (out_dir / f"{out_dir.name}.gguf").stat().st_size / 1e6
        print(f"GGUF ({gguf_type}, {size:.1f} MB): {out_dir / (out_dir.name + '.gguf')}; Ollama: {out_dir / 'Modelfile'}")
    if push_to_hub:
        print(f"Uploaded to {push(out_dir, push_to_hub, token, private)}")
