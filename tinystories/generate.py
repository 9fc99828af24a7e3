"""Write stories with a trained model, from a Lightning checkpoint or an exported Hugging Face folder.

    python -m tinystories generate --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt --prompt "Once upon"
    python -m tinystories generate --ckpt_path my-model/ --prompts_file prompts.txt --seed 1 --output stories.jsonl
    python -m tinystories generate --ckpt_path last.ckpt --prompt "Tom" --prompt "Lily" --do_sample false  # greedy

Prompts are encoded without BOS, as the training stories were, and batched with left padding; `generate` derives
each row's positions from the attention mask, so a prompt's story does not depend on its batch. `sample_stories`
is shared with the `SampleStories` training callback. A checkpoint carries its tokenizer (`TinyStoriesData`'s
state), so it needs nothing else.
"""

import json
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from tinystories.checks import one_line
from tinystories.model import TinyStoriesLM
from tinystories.tokenizer import load_tokenizer

COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper inserts it into every key of a compiled submodule


def strip_compile_prefix(state_dict: dict) -> dict:
    return {k.replace(COMPILE_PREFIX, ""): v for k, v in state_dict.items()}


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, not a checkpoint, an unpickling error: all end the same way
        why = one_line(err, 160) if zipfile.is_zipfile(path) else "truncated or not a checkpoint: no zip directory"
        raise SystemExit(f"error: --ckpt_path {path}: not a readable Lightning checkpoint ({why})") from err


def model_from_checkpoint(checkpoint: dict) -> tuple[TinyStoriesLM, PreTrainedModel]:
    """The Lightning module rebuilt from the checkpoint's hyperparameters, and its `LlamaForCausalLM` with weights."""
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    module = TinyStoriesLM(**hparams)
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in strip_compile_prefix(checkpoint["state_dict"]).items()
               if k.startswith(prefix)}
    module.model.load_state_dict(weights, strict=True)
    return module.eval(), module.model


def tokenizer_from_checkpoint(checkpoint: dict, path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in the checkpoint; for older checkpoints, the data module's `data.tokenizer` again."""
    files = checkpoint.get("TinyStoriesData", {}).get("tokenizer_files")
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
            return load_tokenizer(tmp)
    from tinystories.data import TinyStoriesData

    hparams = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if not k.startswith("_")}
    try:
        return TinyStoriesData(**hparams).tokenizer
    except Exception as err:
        raise SystemExit(f"error: --ckpt_path {path}: holds no tokenizer and its data.tokenizer "
                         f"({hparams.get('tokenizer')}) cannot be rebuilt: {err}") from err


def load(ckpt_path: Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A `LlamaForCausalLM` in eval mode on `device` and its tokenizer, from a `.ckpt` file or an exported folder."""
    path = Path(ckpt_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: --ckpt_path {path}: a folder without config.json; give a .ckpt file or a "
                             "folder written by `python -m tinystories export`")
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), load_tokenizer(str(path))
    elif path.is_file():
        checkpoint = read_checkpoint(path)
        model, tokenizer = model_from_checkpoint(checkpoint)[1], tokenizer_from_checkpoint(checkpoint, path)
    else:
        raise SystemExit(f"error: --ckpt_path {path}: no such file or folder")
    return model.to(device).eval(), tokenizer


def generation_config(tokenizer, max_new_tokens: int, do_sample: bool, temperature: float, top_k: int,
                      top_p: float, num_return_sequences: int = 1) -> GenerationConfig:
    # Greedy gets transformers' neutral values: unset ones would be filled from the model's generation_config.json
    # (an export samples by default), and transformers warns about sampling flags on a greedy run.
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else dict(
        temperature=1.0, top_k=50, top_p=1.0)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample,
                            num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **sampling)


def until_eos(ids: list[int], eos_token_id: int) -> tuple[list[int], bool]:
    """The generated ids up to and including the first EOS (later ones are padding), and whether there was one."""
    if eos_token_id in ids:
        return ids[:ids.index(eos_token_id) + 1], True
    return ids, False


@torch.no_grad()
def sample_stories(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                   max_new_tokens: int = 256, do_sample: bool = True, temperature: float = 0.8, top_k: int = 40,
                   top_p: float = 0.95, num_return_sequences: int = 1, seed: Optional[int] = None,
                   batch_size: int = 8) -> list[dict]:
    """Continue each prompt `num_return_sequences` times, in prompt order.

    Returns one dict per story: `prompt`, `completion` (the new text), `new_tokens` (EOS included) and `eos` (whether
    it ended at EOS rather than at `max_new_tokens`). With a seed the caller's random state is left as it was.
    """
    config = generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_k, top_p, num_return_sequences)
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    stories = []
    # autocast off: a callback may run inside the trainer's mixed-precision context; the model keeps its own dtype.
    with torch.random.fork_rng(devices=cuda), torch.autocast(device.type, enabled=False):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**batch, generation_config=config)
            width = batch["input_ids"].shape[1]
            for row, ids in enumerate(out[:, width:].tolist()):
                ids, eos = until_eos(ids, tokenizer.eos_token_id)
                stories.append({"prompt": chunk[row // num_return_sequences], "new_tokens": len(ids), "eos": eos,
                                "completion": tokenizer.decode(ids, skip_special_tokens=True)})
    return stories


def read_prompts(prompt: Union[str, list[str], None], prompts_file: Optional[Path]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if prompts_file is not None:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise SystemExit(f"error: --prompts_file {prompts_file}: no such file") from None
        except UnicodeDecodeError:
            raise SystemExit(f"error: --prompts_file {prompts_file}: not UTF-8 text") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise SystemExit("error: no prompts; give --prompt TEXT (repeatable) or --prompts_file FILE (one per line)")
    if not all(p.strip() for p in prompts):
        raise SystemExit("error: --prompt: an empty prompt; give each story's first words")
    return prompts


def pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available; use --device cpu")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def main(
    *,
    ckpt_path: Path,
    prompt: Union[str, list[str], None] = None,
    prompts_file: Optional[Path] = None,
    max_new_tokens: int = 256,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    num_return_sequences: int = 1,
    seed: Optional[int] = None,
    batch_size: int = 8,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    output: Optional[Path] = None,
) -> None:
    """Continue prompts into stories and print them; optionally write them as JSON lines.

    Args:
        ckpt_path: A Lightning checkpoint (`.ckpt`) or a folder written by `python -m tinystories export`.
        prompt: A story beginning; repeat the option for more prompts.
        prompts_file: A UTF-8 text file of prompts, one per line (blank lines skipped); added after --prompt.
        max_new_tokens: Most tokens generated per story; a story ends earlier at EOS.
        do_sample: Sample (true) or take the likeliest token each step (false, greedy and deterministic).
        temperature: Sampling temperature; lower is more conservative.
        top_k: Sample among the k likeliest tokens.
        top_p: Sample within the smallest set of tokens whose probability reaches p (nucleus).
        num_return_sequences: Stories per prompt (sampling only).
        seed: Random seed, so a run can be repeated; null picks one and prints it.
        batch_size: Prompts generated together (left-padded).
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        output: A `.jsonl` file to write: one line per story with prompt, completion and settings.
    """
    prompts = read_prompts(prompt, prompts_file)
    if num_return_sequences < 1 or batch_size < 1 or max_new_tokens < 1:
        raise SystemExit("error: --num_return_sequences, --batch_size and --max_new_tokens must be at least 1")
    if num_return_sequences > 1 and not do_sample:
        raise SystemExit("error: --num_return_sequences > 1 needs --do_sample true (greedy gives one story)")
    if output is not None and Path(output).exists():
        raise SystemExit(f"error: --output {output} already exists; choose a new file (nothing was written)")
    seed = random.SystemRandom().randrange(2**31) if seed is None and do_sample else seed
    model, tokenizer = load(ckpt_path, pick_device(device))
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    stories = sample_stories(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             num_return_sequences=num_return_sequences, seed=seed, batch_size=batch_size, **sampling)
    for i, story in enumerate(stories, 1):
        ending = "" if story["eos"] else " [max_new_tokens reached]"
        print(f"--- story {i} of {len(stories)}{ending}\n{story['prompt']}{story['completion']}\n")
    if do_sample:
        print(f"(seed {seed}: the same options with --seed {seed} repeat these stories)")
    if output is not None:
        record = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=sampling.get("temperature"),
                      top_k=sampling.get("top_k"), top_p=sampling.get("top_p"),
                      num_return_sequences=num_return_sequences, seed=seed, ckpt_path=str(ckpt_path))
        with open(output, "x", encoding="utf-8") as f:
            for story in stories:
                f.write(json.dumps({**story, "settings": record}, ensure_ascii=False) + "\n")
        print(f"Wrote {len(stories)} {'story' if len(stories) == 1 else 'stories'} to {output}")
