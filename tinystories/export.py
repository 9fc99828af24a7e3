"""Export a Lightning checkpoint as a Hugging Face model folder, and optionally upload it to the hub.

    python -m tinystories export --ckpt_path lightning_logs/demo/checkpoints/last.ckpt --out_dir my-model
    python -m tinystories export --ckpt_path my-model --push_to_hub me/tinystories-demo     # upload it as it is
    python -m tinystories export --ckpt_path last.ckpt --out_dir my-model --push_to_hub me/tinystories-demo

The folder holds `config.json`, `model.safetensors`, the tokenizer, `generation_config.json` (the recipe's sampling
defaults) and a model card `README.md`; `AutoModelForCausalLM.from_pretrained("my-model")` loads it, and so does
`python -m tinystories generate --ckpt_path my-model`. An exported folder is uploaded as it is, but for its card's
references to the folder's name, which name the hub repository in the upload (the folder on disk is not changed).
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from tinystories import checkpoint as ckpt
from tinystories.checks import writable
from tinystories.errors import UserError
from tinystories.generate import generation_config

# The reference recipe's sampling defaults, written to generation_config.json.
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.95)


def training_summary(checkpoint: dict) -> dict:
    """Steps, samples and the most tokens they can hold, from what the checkpoint records."""
    data = checkpoint.get("datamodule_hyper_parameters", {})
    shape = checkpoint.get("train_shape", {})
    steps = int(checkpoint.get("global_step", 0))
    batch, max_length = data.get("batch_size"), data.get("max_length")
    world, accumulate = shape.get("world_size"), shape.get("accumulate_grad_batches")
    samples = steps * batch * world * accumulate if None not in (batch, world, accumulate) else None
    return {"steps": steps, "batch_size": batch, "world_size": world, "accumulate_grad_batches": accumulate,
            "samples": samples, "max_tokens": samples * max_length if samples and max_length else None,
            "max_length": max_length, "packing": data.get("packing")}


def validation_metrics(checkpoint: dict) -> dict:
    """`val/*` metrics stored by `TinyStoriesLM.on_save_checkpoint` (none before the first validation)."""
    return dict(checkpoint.get("val_metrics") or {})


def hub_dataset(dataset: str) -> Optional[str]:
    """The data set's hub id when it is one (`roneneldan/TinyStories`), for the card's metadata."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) and not dataset.startswith(".") and not Path(dataset).exists():
        return dataset
    return None


def optimizer_text(hp: dict) -> str:
    if hp.get("optimizer") == "muon":
        return (f"Muon (peak learning rate {hp.get('muon_learning_rate') or hp.get('learning_rate')}) on hidden "
                f"matrices and AdamW ({hp.get('learning_rate')}) on embeddings, head and norms")
    return f"AdamW, peak learning rate {hp.get('learning_rate')}"


CARD = """---
{meta}
---

# {name}

A {parameters:,}-parameter LLaMA (`LlamaForCausalLM`) trained from scratch to write short children's stories in
the style of TinyStories, with the `tinystories` Lightning project.

## Architecture

| | |
|---|---|
| parameters | {parameters:,} |
| layers | {config.num_hidden_layers} |
| hidden size | {config.hidden_size} |
| MLP (SwiGLU) size | {config.intermediate_size} |
| attention heads / key-value heads | {config.num_attention_heads} / {config.num_key_value_heads} |
| vocabulary | {config.vocab_size:,} |
| context | trained on up to {max_length} tokens (RoPE, theta {rope_theta}) |
| tied embeddings | {tied} |

## Data

Stories from `{dataset}`: trained on split `{train_split}`, validated on `{val_split}`.
Tokenizer: {tokenizer_text}. Each story was tokenized without BOS and ended with EOS (`{eos}`).

## Training

{training}

## Evaluation

{evaluation}

## How to use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

generator = pipeline("text-generation", model="{name}")
print(generator("Once upon a time", max_new_tokens=200)[0]["generated_text"])

# or by hand; prompts are encoded without BOS, as the training stories were
tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
inputs = tokenizer(["Once upon a time"], return_tensors="pt", add_special_tokens=False)
out = model.generate(**inputs, max_new_tokens=200)  # samples with generation_config.json's defaults
print(tokenizer.decode(out[0], skip_special_tokens=True))
```

`generation_config.json` samples with temperature {temperature}, top-k {top_k} and top-p {top_p}, stopping at EOS.
With the `tinystories` project installed, in a local copy of this folder (`hf download {name} --local-dir {folder}`
from the hub): `python -m tinystories generate --ckpt_path {folder} --prompt "Once upon a time"`.
"""
METRIC_NAMES = {"val/loss": "loss (nats per token)", "val/ppl": "perplexity", "val/bpb": "bits per UTF-8 byte"}


def training_text(checkpoint: dict) -> str:
    train, hp = training_summary(checkpoint), checkpoint["hyper_parameters"]["optimization"]
    if train["samples"] is None:
        done = f"{train['steps']:,} steps of batch {train['batch_size']} per device (devices not recorded)."
    else:
        if train["packing"]:
            kind = f"packed blocks of {train['max_length']} tokens, a few partial ones left-padded"
        else:
            kind = f"one story each, cut to at most {train['max_length']} tokens and left-padded, pads not trained on"
        done = (f"{train['steps']:,} optimizer steps of {train['batch_size']} samples x {train['world_size']} "
                f"device(s) x {train['accumulate_grad_batches']} accumulated batch(es): {train['samples']:,} samples "
                f"({kind}), so at most {train['max_tokens']:,} tokens; the exact count is not recorded.")
    return f"{done}\n{optimizer_text(hp)}, {schedule_text(hp)}, {decay_text(hp)}."


def schedule_text(hp: dict) -> str:
    warmup = f"{hp.get('warmup_steps', 0)} warmup steps"
    if hp.get("lr_schedule") == "wsd":
        return f"{warmup}, constant, then linear decay to zero over the last {hp.get('decay_fraction'):.0%} of the run"
    return f"{warmup} then cosine decay to zero"


def decay_text(hp: dict) -> str:
    decay, muon_decay = hp.get("weight_decay"), hp.get("muon_weight_decay")
    if hp.get("optimizer") == "muon" and muon_decay is not None and muon_decay != decay:
        return f"weight decay {muon_decay} on the hidden matrices and {decay} on the rest"
    return f"weight decay {decay}"


def evaluation_text(checkpoint: dict) -> str:
    metrics, data = validation_metrics(checkpoint), checkpoint.get("datamodule_hyper_parameters", {})
    if not metrics:
        return "No validation metrics were recorded in this checkpoint."
    rows = "\n".join(f"| {METRIC_NAMES.get(k, k)} | {v:.4f} |" for k, v in sorted(metrics.items()))
    text = (f"On `{data.get('val_split', 'validation')}` of `{data.get('dataset')}`, at the last validation before "
            f"this checkpoint:\n\n| metric | value |\n|---|---|\n{rows}")
    return text


def model_card(checkpoint: dict, model, tokenizer, name: str) -> str:
    data = checkpoint.get("datamodule_hyper_parameters", {})
    dataset = str(data.get("dataset", "unknown"))
    meta = ["library_name: transformers", "pipeline_tag: text-generation", "tags: [llama, tinystories]"]
    meta += [f"datasets: [{hub_dataset(dataset)}]"] if hub_dataset(dataset) else []
    if data.get("tokenizer"):
        tokenizer_text = f"`{data['tokenizer']}` ({len(tokenizer):,} tokens, included here)"
    else:
        tokenizer_text = (f"a byte-level BPE of {len(tokenizer):,} tokens trained on `{data.get('train_split')}` "
                          "of the same data (included here)")
    return CARD.format(
        meta="\n".join(meta), name=name, folder=name.split("/")[-1], parameters=model.num_parameters(),
        config=model.config,
        max_length=data.get("max_length"), rope_theta=(model.config.rope_parameters or {}).get("rope_theta"),
        tied=str(model.config.tie_word_embeddings).lower(), dataset=dataset, train_split=data.get("train_split"),
        val_split=data.get("val_split"), tokenizer_text=tokenizer_text, eos=tokenizer.eos_token,
        training=training_text(checkpoint), evaluation=evaluation_text(checkpoint), **SAMPLING)


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


def write_folder(checkpoint: dict, ckpt_path: Path, out_dir: Path, name: str, max_new_tokens: int) -> int:
    """Write the export into a temporary sibling folder and rename it, so `out_dir` appears whole or not at all."""
    model = ckpt.model_of(checkpoint)
    tokenizer = ckpt.tokenizer_of(checkpoint, ckpt_path)
    model.generation_config = generation_config(tokenizer, max_new_tokens, **SAMPLING)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(checkpoint, model, tokenizer, name), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp makes the folder private (0700); a model is to be shared
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked before
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model.num_parameters()


def push_exported(folder: Path, out_dir: Optional[Path], repo_id: Optional[str], private: bool) -> None:
    """Upload a folder written by export before, as it is."""
    if out_dir is not None:
        raise UserError(f"--ckpt_path {folder}: an exported folder already; leave out --out_dir (nothing to write), "
                        "and give --push_to_hub USER/NAME to upload it")
    if not repo_id:
        raise UserError(f"--ckpt_path {folder}: an exported folder already; give --push_to_hub USER/NAME to upload "
                        "it, or a .ckpt with --out_dir to export one")
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise UserError(f"--ckpt_path {folder}: no {' or '.join(missing)}; give a folder written by export, or a "
                        ".ckpt with --out_dir")
    token = hub_token()
    print(f"Uploaded {folder} to {push(folder, repo_id, token, private)}")


def main(
    *,
    ckpt_path: Path,
    out_dir: Optional[Path] = None,
    push_to_hub: Optional[str] = None,
    private: bool = False,
    max_new_tokens: int = 256,
) -> None:
    """Export a Lightning checkpoint as a Hugging Face model folder with a model card, and optionally upload it;
    or upload a folder exported before.

    Args:
        ckpt_path: A Lightning checkpoint (`.ckpt`) written by `python -m tinystories fit`, or a folder written by
            export, which --push_to_hub then uploads as it is.
        out_dir: Folder to write, required with a .ckpt; it must not exist or be empty (nothing is overwritten).
        push_to_hub: A hub repository id (`user/name`) to create if needed and upload the folder to; needs a
            token (`hf auth login` or HF_TOKEN) and network. The uploaded model card names this id.
        private: Create the hub repository as private.
        max_new_tokens: Default story length written to generation_config.json (at least 1).
    """
    ckpt_path = Path(ckpt_path)
    out_dir = None if out_dir is None else Path(out_dir)
    if ckpt_path.is_dir():
        return push_exported(ckpt_path, out_dir, push_to_hub, private)
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
    parameters = write_folder(checkpoint, ckpt_path, out_dir, name, max_new_tokens)
    print(f"Exported {parameters:,} parameters (step {checkpoint.get('global_step')}) to {out_dir}")
    if push_to_hub:
        print(f"Uploaded to {push(out_dir, push_to_hub, token, private)}")
