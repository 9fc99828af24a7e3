"""The model card (`README.md`) of an exported folder: what the checkpoint records, stated, nothing guessed.

    text = model_card(checkpoint, model, tokenizer, "my-model", gguf_file="my-model.gguf", gguf_type="f16")

Architecture from the model's config; data, steps and batch shape from the checkpoint's data module and
`train_shape`; the optimizer and schedule from its hyperparameters; `val/*` from the last validation it saw; and,
with a GGUF beside it, the llama.cpp / Ollama / LM Studio commands.
"""

import re
from pathlib import Path
from typing import Optional

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
{gguf}"""
GGUF_CARD = """
## llama.cpp, Ollama and LM Studio

`{file}` is this model as GGUF ({tensor_type} weights), with the same tokenizer (no BOS added) and sampling
defaults. In a local copy of this folder:

```bash
llama-completion -m {folder}/{file} -p "Once upon a time" -n 200      # llama.cpp; --temp 0 for the likeliest story
llama-server -m {folder}/{file}      # then: curl http://127.0.0.1:8080/completion -d '{{"prompt": "Once upon a time"}}'
ollama create {ollama} -f {folder}/Modelfile && ollama run {ollama} "Once upon a time"
```

LM Studio opens `{file}` as it is. This is a story model, not a chat model: give it a story's first words.
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


def ollama_name(name: str) -> str:
    """A name `ollama create` takes: lower case letters, digits, `.`, `_` and `-`."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.split("/")[-1].lower()).strip("-._") or "tinystories"


def gguf_card(name: str, file: Optional[str], tensor_type: Optional[str]) -> str:
    if file is None:
        return ""
    return GGUF_CARD.format(file=file, tensor_type=tensor_type, folder=name.split("/")[-1], ollama=ollama_name(name))


def model_card(checkpoint: dict, model, tokenizer, name: str, gguf_file: Optional[str] = None,
               gguf_type: Optional[str] = None) -> str:
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
        training=training_text(checkpoint), evaluation=evaluation_text(checkpoint),
        gguf=gguf_card(name, gguf_file, gguf_type), **SAMPLING)
