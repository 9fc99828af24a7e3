"""`export --gguf`, checked with llama.cpp itself (tests/llama_cpp.py: its server, in process, on 127.0.0.1).

Two models trained as shipped on ../shared's real stories: configs/demo.yaml (its own 4k byte-level BPE, 100 steps)
and the 19.5M recipe configs/tinystories-20m.yaml (LLaMA-2's SentencePiece tokenizer, 30 steps). For each, with f32
weights: (a) llama.cpp tokenizes the 1,507 validation stories, and texts with unicode, digits, runs of spaces and
newlines, to our ids; (b) its greedy continuation of the paper's 44 prompts equals `generate --do_sample false` for
64 new tokens (or up to EOS where generate stops); (c) its log-probabilities of a story agree with transformers'.
(b) and (c) run llama.cpp with f32 keys/values and no flash attention (`exact`), so only the weights' type rounds;
(c) is checked with llama.cpp's defaults too, and the other tensor types against their own tolerances.
The tiny model of the suite covers the same path without ../shared.
"""

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.conftest import LLAMA_TOKENIZER, ROOT, SHARED, TINYSTORIES, needs_shared
from tests.llama_cpp import LlamaCpp, greedy_parity, logprob_parity, tokenization_mismatches
from tinystories.__main__ import main
from tinystories.checkpoint import load
from tinystories.generate import sample_stories
from tinystories.sources import load_split
from tinystories.synthetic import generate_stories

PROMPTS = SHARED / "eval" / "Evaluation prompts.yaml"
# Runs of spaces and newlines, tabs, digits, accents, CJK and emoji. None starts with a space: transformers' LLaMA-2
# tokenizer drops the leading "▁" there and llama.cpp and sentencepiece keep it (docs/gguf.md).
EDGE_TEXTS = ["Tom's dog ran   fast!! 12345 apples, 3.14 pies.\n\n  The end.", "naïve café — 日本語 🦙 Zoë's “quotes”",
              "indented\tand\ttabs  \n\n\n\nfour newlines", "a" + " " * 37 + "b", "trailing space ", "x\r\ny 2024-12-07"]
# Greedy near-ties: where transformers' logits of the two candidates differ by less than this, either is a right
# greedy choice for float rounding, and the rest of that prompt is not compared (tests/llama_cpp.py).
TIE = 1e-3
# (c): largest |log p| difference over the 5 likeliest next tokens at every position of a story.
EXACT_TOLERANCE = 1e-4  # f32 weights, f32 keys/values: measured 1e-5
DEFAULT_TOLERANCE = 0.02  # llama.cpp's defaults (f16 keys/values, flash attention): measured 0.002 to 0.008
TYPE_TOLERANCE = {"f16": 0.05, "bf16": 0.25, "q8_0": 0.25}  # demo model, llama.cpp's defaults


def trained(tmp_path_factory, config: str, *data: str, steps: int):
    """`fit` of a shipped config on ../shared's stories, exported with an f32 GGUF: (folder, its .gguf)."""
    root = tmp_path_factory.mktemp(config)
    main(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--data.dataset", str(TINYSTORIES), *data,
          "--trainer.default_root_dir", str(root), "--run", config, "--trainer.max_steps", str(steps),
          "--trainer.max_epochs", "-1", "--trainer.enable_progress_bar", "false", "--samples.prompts", "[]"])
    folder = root / "export" / config
    main(["export", "--ckpt_path", str(root / "lightning_logs" / config / "checkpoints" / "last.ckpt"),
          "--out_dir", str(folder), "--gguf", "--gguf_type", "f32"])
    return folder, folder / f"{config}.gguf"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, monkeypatch_module):
    return trained(tmp_path_factory, "demo", steps=100)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, monkeypatch_module):
    return trained(tmp_path_factory, "tinystories-20m", "--data.tokenizer", str(LLAMA_TOKENIZER),
                   "--data.train_split", "train[:200]", "--data.val_split", "validation[:16]", steps=30)


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """Runs write `lightning_logs/` under the working directory: a temporary one for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield patch


@pytest.fixture(scope="module")
def stories():
    return list(load_split(str(TINYSTORIES), "validation", 0)["text"])


@pytest.fixture(scope="module")
def prompts():
    return yaml.safe_load(PROMPTS.read_text(encoding="utf-8"))


MODELS = [pytest.param("demo", marks=[pytest.mark.slow, needs_shared]),
          pytest.param("recipe", marks=[pytest.mark.slow, needs_shared])]


@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_tokenizes_real_stories_to_our_ids(name, request, stories):
    folder, gguf = request.getfixturevalue(name)
    tokenizer = load(folder).tokenizer
    with LlamaCpp(gguf) as cpp:
        assert tokenization_mismatches(tokenizer, cpp, stories + EDGE_TEXTS) == []
    assert len(stories) == 1507


@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_continues_the_papers_prompts_as_generate_does(name, request, prompts):
    folder, gguf = request.getfixturevalue(name)
    loaded = load(folder)
    with LlamaCpp(gguf, exact=True) as cpp:
        result = greedy_parity(loaded.model, loaded.tokenizer, cpp, prompts, n=64, tie=TIE)
    assert len(prompts) == 44 and result.differ == [], result.differ
    assert result.same + len(result.ties) == 44 and result.same >= 40, result.ties
    assert result.tokens > 44 * 32  # most continuations run the full 64 tokens


@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_log_probabilities_agree_with_transformers(name, request, stories):
    folder, gguf = request.getfixturevalue(name)
    loaded = load(folder)
    ids = loaded.tokenizer(stories[0], add_special_tokens=False)["input_ids"]
    assert len(ids) > 100
    with LlamaCpp(gguf, exact=True) as cpp:
        assert logprob_parity(loaded.model, cpp, ids) < EXACT_TOLERANCE
    with LlamaCpp(gguf) as cpp:
        assert logprob_parity(loaded.model, cpp, ids) < DEFAULT_TOLERANCE


@needs_shared
@pytest.mark.slow
def test_other_tensor_types_are_smaller_and_within_their_tolerance(demo, stories, tmp_path):
    folder, gguf = demo
    copy = tmp_path / "demo"  # --gguf on a folder exported before, writing into the copy
    shutil.copytree(folder, copy)
    loaded = load(folder)
    ids = loaded.tokenizer(stories[0], add_special_tokens=False)["input_ids"]
    sizes = {"f32": gguf.stat().st_size}
    for tensor_type, tolerance in TYPE_TOLERANCE.items():
        main(["export", "--ckpt_path", str(copy), "--gguf_type", tensor_type, "--overwrite"])
        sizes[tensor_type] = (copy / "demo.gguf").stat().st_size
        with LlamaCpp(copy / "demo.gguf") as cpp:
            assert logprob_parity(loaded.model, cpp, ids, every=4) < tolerance, tensor_type
    assert sizes["f32"] > 1.9 * sizes["f16"] and sizes["f16"] == pytest.approx(sizes["bf16"], rel=0.01)
    assert sizes["bf16"] > 1.6 * sizes["q8_0"]


@pytest.mark.parametrize("name", MODELS)
def test_transformers_reads_the_gguf_back_to_the_same_model(name, request):
    folder, gguf = request.getfixturevalue(name)
    loaded = load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32).eval()
    text = "Once upon a time, Lily and Tom found 3 red balls in the park."
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer(text)["input_ids"] == ids  # no BOS: add_bos_token is false in the file
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, loaded.model(torch.tensor([ids])).logits)


@pytest.mark.parametrize("name", MODELS)
def test_pipeline_on_the_export_gives_generates_greedy_text(name, request):
    folder, _ = request.getfixturevalue(name)
    loaded = load(folder)
    assert AutoTokenizer.from_pretrained(folder)("Once upon a time")["input_ids"][0] != loaded.tokenizer.bos_token_id
    prompts = ["Once upon a time", "Lily and her dog"]
    ours = sample_stories(loaded.model, loaded.tokenizer, prompts, max_new_tokens=40, do_sample=False)
    generator = pipeline("text-generation", model=str(folder), device="cpu")
    for prompt, story in zip(prompts, ours):
        text = generator(prompt, max_new_tokens=40, do_sample=False)[0]["generated_text"]
        assert text == prompt + story["completion"]


@needs_shared
@pytest.mark.slow
def test_recipe_export_carries_llama2s_tokenizer_model(recipe):
    folder, gguf = recipe
    assert (folder / "tokenizer.model").read_bytes() == (LLAMA_TOKENIZER / "tokenizer.model").read_bytes()
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM ./{gguf.name}\n" in modelfile and 'PARAMETER stop "</s>"' in modelfile
    assert "PARAMETER num_ctx 2048" in modelfile and 'TEMPLATE """{{ .Prompt }}"""' in modelfile
    card = (folder / "README.md").read_text()
    assert f"llama-completion -m tinystories-20m/{gguf.name}" in card and "ollama create tinystories-20m" in card


def test_tiny_model_without_shared_data(trained_ckpt, tmp_path):
    """The suite's tiny model (512-token BPE on synthetic stories): the same checks, no ../shared needed."""
    folder = tmp_path / "tiny"
    main(["export", "--ckpt_path", str(trained_ckpt), "--out_dir", str(folder), "--gguf", "--gguf_type", "f32"])
    loaded = load(folder)
    texts = list(generate_stories(200, seed=7)) + EDGE_TEXTS
    with LlamaCpp(folder / "tiny.gguf", exact=True) as cpp:
        assert tokenization_mismatches(loaded.tokenizer, cpp, texts) == []
        result = greedy_parity(loaded.model, loaded.tokenizer, cpp, ["Once upon a time", "Tom and Lily", "The cat"],
                               n=48, tie=TIE)
        assert result.same == 3, (result.ties, result.differ)
        ids = loaded.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
        assert logprob_parity(loaded.model, cpp, ids) < EXACT_TOLERANCE


def test_gguf_refusals_write_nothing(trained_ckpt, tmp_path, capsys):
    folder = tmp_path / "tiny"
    main(["export", "--ckpt_path", str(trained_ckpt), "--out_dir", str(folder), "--gguf"])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {"tiny.gguf", "Modelfile"} <= set(before)
    with pytest.raises(SystemExit, match=r"^error: --gguf: .*tiny.gguf exists; pass --overwrite to replace tiny.gguf "
                                         r"and Modelfile \(nothing was written\)$"):
        main(["export", "--ckpt_path", str(folder), "--gguf", "--gguf_type", "q8_0"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # A tokenizer no GGUF vocabulary reproduces: a byte-level BPE that adds a prefix space.
    other = tmp_path / "prefix-space"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("*.gguf", "Modelfile"))
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["add_prefix_space"] = True
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(SystemExit, match=r"^error: --gguf: .*prefix-space has a tokenizer \(BPE model, pre-tokenizer "
                                         r"ByteLevel\) that no GGUF vocabulary reproduces exactly; .*\(nothing was "
                                         r"written\)$"):
        main(["export", "--ckpt_path", str(other), "--gguf"])
    # An architecture GGUF's llama does not express.
    config = json.loads((other / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"^error: --gguf: .* RoPE scaling linear \(not written\)"):
        main(["export", "--ckpt_path", str(other), "--gguf"])
    assert sorted(p.name for p in other.iterdir() if "gguf" in p.name or p.name == "Modelfile") == []
    assert not list(tmp_path.glob("*/.*"))  # no temporary file left


@needs_shared
def test_a_sentencepiece_checkpoint_without_tokenizer_model_is_refused_before_writing(tmp_path):
    """A checkpoint of LLaMA-2's tokenizer whose tokenizer.model cannot be found: one line, no --out_dir."""
    from tinystories.checkpoint import read

    source = tmp_path / "llama2"  # the tokenizer without its tokenizer.model
    source.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(LLAMA_TOKENIZER / name, source)
    root = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "configs" / "tinystories-20m.yaml"), "--data.dataset", str(TINYSTORIES),
          "--data.tokenizer", str(source), "--data.train_split", "train[:8]", "--data.val_split", "validation[:4]",
          "--trainer.default_root_dir", str(root), "--run", "r", "--trainer.max_steps", "1", "--trainer.max_epochs",
          "-1", "--samples.prompts", "[]", "--model.architecture.hidden_size", "32",
          "--model.architecture.num_hidden_layers", "1", "--model.architecture.num_attention_heads", "4",
          "--model.architecture.num_key_value_heads", "2", "--trainer.enable_progress_bar", "false"])
    ckpt = root / "lightning_logs" / "r" / "checkpoints" / "last.ckpt"
    assert "tokenizer_model" not in read(ckpt)["TinyStoriesData"]
    with pytest.raises(SystemExit, match=r"^error: --gguf: .* has a SentencePiece tokenizer but no tokenizer.model, "
                                         r"whose merge scores llama.cpp needs; .*\(nothing was written\)$"):
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--gguf"])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "hf")])  # the HF folder alone is fine
    assert not (tmp_path / "hf" / "tokenizer.model").exists()


def test_llama_cpp_takes_the_sampling_defaults_from_the_file(trained_ckpt, tmp_path):
    """generation_config.json's sampling settings reach llama.cpp's defaults (general.sampling.*). The recipe's are
    llama.cpp's own (0.8, 40, 0.95), so other values show that the file is read."""
    folder = tmp_path / "tiny"
    main(["export", "--ckpt_path", str(trained_ckpt), "--out_dir", str(folder)])
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(temperature=0.5, top_k=7, top_p=0.9)
    (folder / "generation_config.json").write_text(json.dumps(generation))
    main(["export", "--ckpt_path", str(folder), "--gguf"])
    assert "PARAMETER temperature 0.5\nPARAMETER top_k 7\nPARAMETER top_p 0.9\n" in (folder / "Modelfile").read_text()
    with LlamaCpp(folder / "tiny.gguf") as cpp:
        settings = cpp.post("/completion", {"prompt": "Once upon a time", "n_predict": 4})["generation_settings"]
    assert (settings["temperature"], settings["top_k"]) == (0.5, 7) and settings["top_p"] == pytest.approx(0.9)
