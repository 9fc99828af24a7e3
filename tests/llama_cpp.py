"""llama.cpp itself on a GGUF file, and the parity checks of an export against it (tests/test_gguf.py and
benchmarks/gguf.py).

    with LlamaCpp("my-model/my-model.gguf") as cpp:       # llama.cpp's server, in this process, on 127.0.0.1
        cpp.tokenize("Once upon a time")                  # ids, no BOS
        cpp.complete("Once upon a time", n_predict=64)    # greedy ids and each one's log-probability
    greedy_parity(model, tokenizer, cpp, prompts)         # against `generate --do_sample false`

llama.cpp comes from `xllamacpp` (PyPI): a prebuilt CPU build of llama.cpp's own server (`tools/server`), which
answers llama-server's HTTP API (`/tokenize`, `/completion`) on a random port of 127.0.0.1 while the object lives.
"""

import json
import math
import urllib.request
from dataclasses import dataclass, field

import torch

from tinystories.generate import sample_stories


class LlamaCpp:
    """llama.cpp's server on one GGUF file; stopped on exit from the `with` block."""

    def __init__(self, path, n_ctx: int = 2048, threads: int = 2, exact: bool = False):
        """llama.cpp's defaults keep keys and values in f16 and pick flash attention where it helps (it computes in
        f16 on a CPU); `exact` keeps them in f32 without it, so only the weights' type rounds."""
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1  # errors only
        if exact:
            params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
            params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.params = params
        self.server = None

    def __enter__(self) -> "LlamaCpp":
        import xllamacpp

        self.server = xllamacpp.Server(self.params)
        self.url = self.server.listening_address
        assert self.url.startswith("http://127.0.0.1:"), self.url
        return self

    def __exit__(self, *exc) -> None:
        del self.server  # its destructor stops the HTTP loop and frees the model
        self.server = None

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def tokenize(self, text: str) -> list[int]:
        """Ids as llama.cpp encodes a prompt: special tokens added as the file says (BOS only where it asks)."""
        return self.post("/tokenize", {"content": text, "add_special": True})["tokens"]

    def complete(self, prompt, n_predict: int, n_probs: int = 1, ignore_eos: bool = False) -> dict:
        """Greedy continuation of `prompt` (text, tokenized as `tokenize` does, or ids): `tokens`, the top `n_probs`
        log-probabilities (of the whole softmax, before sampling) at each step, and llama.cpp's `timings`."""
        return self.post("/completion", {
            "prompt": prompt, "n_predict": n_predict, "temperature": 0, "ignore_eos": ignore_eos,
            "return_tokens": True, "n_probs": n_probs, "post_sampling_probs": False, "cache_prompt": False})


def tokenization_mismatches(tokenizer, cpp: LlamaCpp, texts: list[str]) -> list[str]:
    """Texts llama.cpp encodes to other ids than our tokenizer does for training (no BOS)."""
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [text for text, ids in zip(texts, ours) if cpp.tokenize(text) != ids]


@dataclass
class Greedy:
    """`generate --do_sample false` against llama.cpp's greedy continuation, prompt by prompt."""

    same: int = 0  # continuations equal token for token (up to EOS or n tokens)
    ties: list = field(default_factory=list)  # (prompt, position, gap): first difference at a near-tie
    differ: list = field(default_factory=list)  # (prompt, position, gap): a real difference
    tokens: int = 0  # new tokens compared


def logits_at(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def greedy_parity(model, tokenizer, cpp: LlamaCpp, prompts: list[str], n: int = 64, tie: float = 1e-3) -> Greedy:
    """Compare greedy continuations of `n` tokens. Where they first differ, transformers' logits of the two tokens at
    that point (prompt and common prefix, unpadded) decide: within `tie` of each other it is a near-tie, where float
    rounding may choose either, and the rest of that prompt is not compared; else it is a difference."""
    stories = sample_stories(model, tokenizer, prompts, max_new_tokens=n, do_sample=False)
    result = Greedy()
    for prompt, story in zip(prompts, stories):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ours = story["ids"]
        theirs = cpp.complete(prompt, n)["tokens"][:len(ours)]
        result.tokens += len(ours)
        if theirs == ours:
            result.same += 1
            continue
        common = min(len(ours), len(theirs))
        at = next((i for i in range(common) if ours[i] != theirs[i]), common)
        if at == common:  # equal as far as both go, but one stopped (at EOS) before the other
            result.differ.append((prompt, at, math.inf))
            continue
        logits = logits_at(model, ids + ours[:at])
        gap = (logits[ours[at]] - logits[theirs[at]]).abs().item()
        (result.ties if gap < tie else result.differ).append((prompt, at, gap))
    return result


def logprob_parity(model, cpp: LlamaCpp, ids: list[int], top: int = 5, every: int = 1) -> float:
    """Largest difference between llama.cpp's and transformers' log-probabilities of the `top` likeliest next tokens
    at each `every`-th position of `ids`: a story teacher-forced, one request per position."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    worst = 0.0
    for end in range(1, len(ids), every):
        reply = cpp.complete(ids[:end], 1, n_probs=top)["completion_probabilities"][0]["top_logprobs"]
        worst = max(worst, max(abs(logprobs[end - 1, t["id"]].item() - t["logprob"]) for t in reply))
    return worst
