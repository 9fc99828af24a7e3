"""An exported folder as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

    python -m tinystories export --ckpt_path last.ckpt --out_dir my-model --gguf        # my-model/my-model.gguf
    python -m tinystories export --ckpt_path my-model --gguf --gguf_type q8_0 --overwrite   # a folder exported before

`write_gguf(folder, path, tensor_type)` reads what `export` wrote (config.json, model.safetensors, the tokenizer and
generation_config.json) and writes it with `gguf`, the writer llama.cpp's own converter uses. What it writes, as
llama.cpp's `convert_hf_to_gguf.py` would for a LLaMA, except for the tokenizer:
- weights under llama.cpp's tensor names, query and key rows permuted from transformers' rotate-half RoPE layout to
  llama.cpp's; norms in f32, the matrices in `tensor_type` (a row q8_0 cannot hold is written f16, as the converter
  does); no `output.weight` when the embeddings are tied;
- LLaMA-2's SentencePiece vocabulary (`tokenizer.ggml.model = llama`) with the scores and token types of its
  `tokenizer.model`: llama.cpp merges by score, and a vocabulary without them tokenizes differently;
- the project's byte-level BPE (`gpt2`) with its merges and llama.cpp's `gpt-2` pre-tokenizer, which splits text
  with the same GPT-2 expression as our `ByteLevel` (llama.cpp's converter refuses a BPE whose hash it does not know);
- no BOS added to prompts (`add_bos_token = false`): the stories were trained without one;
- BOS/EOS/unk/pad ids, the context length, RoPE base and the recipe's sampling defaults (`general.sampling.*`, which
  llama-cli, llama-completion and llama-server take as their defaults).
`modelfile` is the Ollama Modelfile beside it. docs/gguf.md has the parity figures against llama.cpp itself.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tinystories.atomic import UMASK
from tinystories.errors import UserError

TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's `gpt-2` pre-tokenizer (unicode_regex_split_custom_gpt2) is this expression, the one tokenizers'
# ByteLevel(use_regex=True) applies. Ollama's own engine reads it from `tokenizer.ggml.pretokenizer` (its default
# there is LLaMA-3's expression), so it is written out as well.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLING_DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95)


@dataclass
class Vocabulary:
    """The tokenizer as GGUF keys: `model` llama (SentencePiece) or gpt2 (byte-level BPE)."""

    model: str
    tokens: list
    types: list
    scores: Optional[list] = None
    merges: list = field(default_factory=list)


def fail(folder, what: str) -> UserError:
    """`folder`: what the user gave (a checkpoint, or the exported folder), named in the one-line error."""
    return UserError(f"--gguf: {folder} {what} (nothing was written)")


def check_architecture(label, config: dict) -> None:
    """Only what llama.cpp's `llama` architecture means: a LLaMA with SiLU, plain RoPE and no biases."""
    problems = []
    if config.get("architectures") != ["LlamaForCausalLM"]:
        problems.append(f"architecture {config.get('architectures')} (GGUF export writes LlamaForCausalLM)")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']} (llama.cpp's llama uses SiLU)")
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        problems.append(f"RoPE scaling {rope.get('rope_type') or config.get('rope_scaling')} (not written)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("biases in attention or MLP (llama.cpp's llama has none)")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.get("head_dim") not in (None, head_dim):
        problems.append(f"head_dim {config['head_dim']} other than hidden_size / num_attention_heads")
    if problems:
        raise fail(label, f"is a model GGUF's llama cannot express: {'; '.join(problems)}")


def sentencepiece_vocabulary(folder: Path, tokenizer_json: dict, label, advice: Optional[str]) -> Vocabulary:
    """Tokens, scores and types from `tokenizer.model`, then tokens added after it (as llama.cpp's converter does)."""
    from transformers.utils import sentencepiece_model_pb2_new as sentencepiece_pb2

    path = folder / "tokenizer.model"
    if not path.is_file():
        raise fail(label, "has a SentencePiece tokenizer but no tokenizer.model, whose merge scores llama.cpp "
                          "needs; " + (advice or "copy the tokenizer's tokenizer.model into the folder, or export it "
                                                 "again from a .ckpt written by this version (they carry it)"))
    proto = sentencepiece_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_pb2.TrainerSpec.BPE:
        raise fail(label, "has a SentencePiece unigram tokenizer; GGUF's llama vocabulary is SentencePiece BPE")
    pieces = list(proto.pieces)
    vocab = tokenizer_json["model"].get("vocab") or {}
    if any(vocab.get(p.piece) != i for i, p in enumerate(pieces)):
        raise fail(label, "has a tokenizer.model whose pieces are not tokenizer.json's vocabulary; put the "
                           "tokenizer's own tokenizer.model in the folder")
    # sentencepiece's piece types (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6) are GGUF's.
    tokens, scores, types = [p.piece for p in pieces], [p.score for p in pieces], [int(p.type) for p in pieces]
    for added in sorted(tokenizer_json.get("added_tokens", []), key=lambda t: t["id"]):
        if added["id"] >= len(tokens):
            tokens.append(added["content"])
            scores.append(-1000.0)
            types.append(added_type(added))
    return Vocabulary("llama", tokens, types, scores=scores)


def added_type(token: dict) -> int:
    """An added token's GGUF type: CONTROL for special tokens (`<s>`), USER_DEFINED for the others."""
    from gguf import TokenType

    return TokenType.CONTROL if token.get("special") else TokenType.USER_DEFINED


def byte_level_vocabulary(tokenizer_json: dict, label) -> Vocabulary:
    """Tokens in id order as tokenizer.json stores them (the byte-to-unicode alphabet), merges as `a b`."""
    vocab = {i: token for token, i in tokenizer_json["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    size = max([*vocab, *added]) + 1
    missing = [i for i in range(size) if i not in vocab and i not in added]
    if missing:
        raise fail(label, f"has a tokenizer with no token for ids {missing[:5]}; GGUF needs one per id")
    tokens = [added[i]["content"] if i in added else vocab[i] for i in range(size)]
    types = [added_type(added[i]) if i in added else 1 for i in range(size)]  # 1: NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    return Vocabulary("gpt2", tokens, types, merges=merges)


def vocabulary(folder: Path, label=None, advice: Optional[str] = None) -> Vocabulary:
    """The folder's tokenizer as GGUF can hold it exactly, or one line saying why it cannot."""
    label = label or folder
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model, pre = tokenizer_json.get("model") or {}, tokenizer_json.get("pre_tokenizer") or {}
    text = json.dumps({k: tokenizer_json.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")})
    if model.get("type") == "BPE" and model.get("byte_fallback") and "Metaspace" in text:
        return sentencepiece_vocabulary(folder, tokenizer_json, label, advice)
    if (model.get("type") == "BPE" and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space") and not tokenizer_json.get("normalizer")):
        return byte_level_vocabulary(tokenizer_json, label)
    kind = f"{model.get('type')} model, pre-tokenizer {pre.get('type')}"
    raise fail(label, f"has a tokenizer ({kind}) that no GGUF vocabulary reproduces exactly; GGUF export takes "
                       "SentencePiece BPE with its tokenizer.model (LLaMA-2) or a byte-level BPE without prefix "
                       "space (the project's own, `data.tokenizer: null`)")


def add_vocabulary(writer, vocab: Vocabulary, vocab_size: int, config: dict, unk_token: Optional[str]) -> None:
    import gguf

    unused = range(len(vocab.tokens), vocab_size)  # embedding rows no token uses, padded as llama.cpp's converter does
    tokens = list(vocab.tokens) + [f"[PAD{i}]" for i in unused]
    types = list(vocab.types) + [gguf.TokenType.UNUSED] * len(unused)
    scores = vocab.scores and list(vocab.scores) + [-1000.0] * len(unused)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre("default" if vocab.model == "llama" else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores:
        writer.add_token_scores(scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
        writer.add_string("tokenizer.ggml.pretokenizer", GPT2_SPLIT)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        if config.get(key) is not None:
            add(config[key])
    if unk_token in tokens:
        writer.add_unk_token_id(tokens.index(unk_token))
    writer.add_add_bos_token(False)  # trained without BOS
    writer.add_add_eos_token(False)


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Query/key rows from transformers' rotate-half RoPE order to llama.cpp's adjacent pairs (its converter's)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def add_tensors(writer, folder: Path, config: dict, tensor_type: str, label) -> None:
    import gguf
    from safetensors.torch import load_file

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[tensor_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    weights = load_file(folder / "model.safetensors")
    for name, tensor in weights.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp uses token_embd.weight for the output then
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            data = permute(data, config["num_key_value_heads"])
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise fail(label, f"has a tensor {name} that GGUF's llama has no place for")
        kind = gguf.GGMLQuantizationType.F32 if data.ndim == 1 else qtype
        try:
            packed = gguf.quants.quantize(data, kind)
        except gguf.QuantError:  # q8_0 packs rows in blocks of 32
            kind = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, kind)
        writer.add_tensor(new_name, packed, raw_dtype=kind)


def sampling(folder: Path) -> dict:
    """generation_config.json's sampling defaults (and max_new_tokens), the recipe's where it has none."""
    path = folder / "generation_config.json"
    return {**SAMPLING_DEFAULTS, **(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})}


def add_model_keys(writer, config: dict, name: str, tensor_type: str, settings: dict) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description("A TinyStories model trained with the tinystories Lightning project: it continues a "
                           "story's first words; not a chat model.")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_sampling_temp(float(settings["temperature"]))
    writer.add_sampling_top_k(int(settings["top_k"]))
    writer.add_sampling_top_p(float(settings["top_p"]))


def write_gguf(folder: Path, path: Path, tensor_type: str = "f16", name: Optional[str] = None, label=None,
               advice: Optional[str] = None) -> None:
    """Write `folder` (an export) as the GGUF file `path`, whole or not at all.
    Errors name `label` (default: the folder) and give `advice` where a SentencePiece model is missing."""
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise UserError(f"--gguf_type {tensor_type}: must be one of {', '.join(TENSOR_TYPES)}")
    folder, path = Path(folder), Path(path)
    label = label or folder
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    check_architecture(label, config)
    vocab = vocabulary(folder, label, advice)
    if len(vocab.tokens) > config["vocab_size"]:
        raise fail(label, f"has {len(vocab.tokens):,} tokens for a model of vocab_size {config['vocab_size']:,}")
    # As `atomic_write`, but GGUFWriter opens the file itself: a temporary name beside `path`, renamed when whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        add_model_keys(writer, config, name or folder.resolve().name, tensor_type, sampling(folder))
        add_vocabulary(writer, vocab, config["vocab_size"], config, special_token(folder, "unk_token"))
        add_tensors(writer, folder, config, tensor_type, label)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o666 & ~UMASK)  # as open() would make it: mkstemp's files are private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def special_token(folder: Path, key: str) -> Optional[str]:
    """A special token's text from tokenizer_config.json (a string, or an AddedToken's fields)."""
    path = folder / "tokenizer_config.json"
    value = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
    return value.get("content") if isinstance(value, dict) else value


def modelfile(gguf_name: str, folder: Path) -> str:
    """Ollama's Modelfile: the GGUF, a raw continuation template (not a chat model), sampling defaults, EOS stop."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    settings = sampling(folder)
    eos = special_token(folder, "eos_token")
    lines = [f"FROM ./{gguf_name}", 'TEMPLATE """{{ .Prompt }}"""',
             f"PARAMETER temperature {settings['temperature']}", f"PARAMETER top_k {settings['top_k']}",
             f"PARAMETER top_p {settings['top_p']}", f"PARAMETER num_ctx {config['max_position_embeddings']}"]
    if settings.get("max_new_tokens"):
        lines.append(f"PARAMETER num_predict {settings['max_new_tokens']}")
    if eos:
        lines.append(f'PARAMETER stop "{eos}"')
    return "# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME \"Once upon a time\"`\n" + \
        "\n".join(lines) + "\n"
