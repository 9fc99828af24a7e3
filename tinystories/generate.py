"""Write stories with a trained model, from a Lightning checkpoint or an exported Hugging Face folder.

    python -m tinystories generate --ckpt_path lightning_logs/demo/checkpoints/last.ckpt --prompt "Once upon"
    python -m tinystories generate --ckpt_path my-model/ --prompts_file prompts.txt --seed 1 --output stories.jsonl
    python -m tinystories generate --ckpt_path last.ckpt --prompt "Tom" --prompt "Lily" --do_sample false  # greedy

Prompts are encoded without BOS, as the training stories were, and batched with left padding; `generate` derives
each row's positions from the attention mask, so a prompt's story does not depend on its batch. `sample_stories`
is shared with the `SampleStories` training callback. A checkpoint carries its tokenizer, so it needs nothing else
(`tinystories/checkpoint.py` reads both kinds of input).
"""

import json
import random
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from tinystories import checkpoint
from tinystories.errors import UserError
from tinystories.instruct import FEATURES, header_text

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

    Returns one dict per story: `prompt`, `completion` (the new text), `ids` (its tokens), `new_tokens` (EOS
    included) and `eos` (whether it ended at EOS rather than at `max_new_tokens`). With a seed the caller's random
    state is left as it was.
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
                                "completion": tokenizer.decode(ids, skip_special_tokens=True), "ids": ids})
    return stories


def instruct_prompt(words: Optional[str], features: Optional[str], summary: Optional[str],
                    random_sentence: Optional[str]) -> Optional[str]:
    """The TinyStories-Instruct header these options ask for, in the trained format; None without any."""
    if words is None and features is None and summary is None and random_sentence is None:
        return None
    header = {}
    for key, value in (("features", features), ("words", words)):
        if value is not None:
            items = [item.strip() for item in value.split(",")]
            if not all(items):
                raise UserError(f"--{key} {value!r}: an empty item; give comma-separated {key}, e.g. "
                                f"{'quit,oak,gloomy' if key == 'words' else 'Dialogue,BadEnding'}")
            header[key] = items
    unknown = [f for f in header.get("features", []) if f not in FEATURES]
    if unknown:
        raise UserError(f"--features: unknown {', '.join(unknown)}; the features are {', '.join(FEATURES)}")
    for key, value in (("summary", summary), ("random_sentence", random_sentence)):
        if value is not None:
            if not value.strip():
                raise UserError(f"--{key} is empty; give the text or leave the option out")
            header[key] = value.strip()
    return header_text(header)


def read_prompts(prompt: Union[str, list[str], None], prompts_file: Optional[Path]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if prompts_file is not None:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UserError(f"--prompts_file {prompts_file}: no such file") from None
        except UnicodeDecodeError:
            raise UserError(f"--prompts_file {prompts_file}: not UTF-8 text") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise UserError("no prompts; give --prompt TEXT (repeatable) or --prompts_file FILE (one per line)")
    if not all(p.strip() for p in prompts):
        raise UserError("--prompt: an empty prompt; give each story's first words")
    return prompts


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Sampling options in their ranges, or one line naming the option (transformers would fail mid-generation)."""
    if not temperature > 0:
        raise UserError(f"--temperature {temperature}: must be above 0 (for the likeliest token at each step, give "
                        "--do_sample false)")
    if top_k < 0:
        raise UserError(f"--top_k {top_k}: must be 0 (off) or more")
    if not 0 < top_p <= 1:
        raise UserError(f"--top_p {top_p}: must be above 0 and at most 1 (1 turns it off)")


def pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
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
    words: Optional[str] = None,
    features: Optional[str] = None,
    summary: Optional[str] = None,
    random_sentence: Optional[str] = None,
) -> None:
    """Continue prompts into stories and print them; optionally write them as JSON lines.

    Args:
        ckpt_path: A Lightning checkpoint (`.ckpt`) or a folder written by `python -m tinystories export`.
        prompt: A story beginning; repeat the option for more prompts.
        prompts_file: A UTF-8 text file of prompts, one per line (blank lines skipped); added after --prompt.
        max_new_tokens: Most tokens generated per story; a story ends earlier at EOS.
        do_sample: Sample (true) or take the likeliest token each step (false, greedy and deterministic).
        temperature: Sampling temperature, above 0; lower is more conservative.
        top_k: Sample among the k likeliest tokens; 0 turns it off.
        top_p: Sample within the smallest set of tokens whose probability reaches p (nucleus), in (0, 1]; 1 turns
            it off.
        num_return_sequences: Stories per prompt (sampling only).
        seed: Random seed, so a run can be repeated; null picks one and prints it.
        batch_size: Prompts generated together (left-padded).
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        output: A `.jsonl` file to write: one line per story with prompt, completion and settings.
        words: For a model fine-tuned on TinyStories-Instruct: words the story must use, comma-separated.
        features: For a model fine-tuned on TinyStories-Instruct: story features, comma-separated, of Dialogue,
            BadEnding, MoralValue, Twist, Foreshadowing, Conflict. A model fine-tuned on headers derived from real
            stories (`data.instruct: derive`) was taught Dialogue only; the others come from synthetic stories and
            the release's instruct records.
        summary: For a model fine-tuned on TinyStories-Instruct: what the story is about.
        random_sentence: For a model fine-tuned on TinyStories-Instruct: a sentence the story must contain.
    """
    header = instruct_prompt(words, features, summary, random_sentence)
    if header is not None and (prompt or prompts_file):
        raise UserError("give --prompt/--prompts_file or the instruct options (--words, --features, --summary, "
                        "--random_sentence), not both")
    prompts = [header] if header is not None else read_prompts(prompt, prompts_file)
    if num_return_sequences < 1 or batch_size < 1 or max_new_tokens < 1:
        raise UserError("--num_return_sequences, --batch_size and --max_new_tokens must be at least 1")
    check_sampling(temperature, top_k, top_p)
    if num_return_sequences > 1 and not do_sample:
        raise UserError("--num_return_sequences > 1 needs --do_sample true (greedy gives one story)")
    if output is not None and Path(output).exists():
        raise UserError(f"--output {output} already exists; choose a new file (nothing was written)")
    seed = random.SystemRandom().randrange(2**31) if seed is None and do_sample else seed
    loaded = checkpoint.load(ckpt_path, pick_device(device))
    model, tokenizer = loaded.model, loaded.tokenizer
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
                f.write(json.dumps({**{k: v for k, v in story.items() if k != "ids"}, "settings": record},
                                   ensure_ascii=False) + "\n")
        print(f"Wrote {len(stories)} {'story' if len(stories) == 1 else 'stories'} to {output}")
