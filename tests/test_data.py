import datasets
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from tests.conftest import LLAMA_TOKENIZER, TINYSTORIES, needs_shared
from tinystories.data import TinyStoriesData, collate, tokenize_batch
from tinystories.sources import DataSourceError, load_split
from tinystories.tokenizer import load_tokenizer, token_bytes


def sample(ids):
    return {"input_ids": ids, "num_bytes": 0}


def test_collate_left_pads_to_golden_lists():
    batch = collate([sample([5, 6, 7]), sample([8, 9]), sample([4])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9], [0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, 8, 9], [-100, -100, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1], [0, 0, 0]]


@needs_shared
def test_collate_matches_hf_language_modeling_collator():
    tokenizer = load_tokenizer(str(LLAMA_TOKENIZER))
    texts = ["Once upon a time, there was a cat.", "Tom ran.", "Lily and her dog played in the big park all day."]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    ours = collate([sample(x) for x in ids], tokenizer.pad_token_id)
    theirs = DataCollatorForLanguageModeling(tokenizer, mlm=False)([{"input_ids": x} for x in ids])
    for key in ("input_ids", "attention_mask", "labels"):
        assert ours[key].tolist() == theirs[key].tolist(), key


@needs_shared
def test_llama_tokenizer_gets_unk_as_left_pad():
    tokenizer = load_tokenizer(str(LLAMA_TOKENIZER))
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 0 and tokenizer.padding_side == "left"


@needs_shared
def test_story_is_cut_to_its_last_tokens_and_ends_with_eos():
    tokenizer = load_tokenizer(str(LLAMA_TOKENIZER))
    sizes = torch.tensor(token_bytes(tokenizer)).numpy()
    text = "Hello, world! Once upon a time"
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = tokenize_batch({"text": [text, "Hi"]}, tokenizer, max_length=5, packing=False, sizes=sizes)
    assert out["input_ids"][0] == full[-4:] + [2]
    assert out["input_ids"][1] == tokenizer("Hi", add_special_tokens=False)["input_ids"] + [2]


def test_packing_joins_stories_and_cuts_fixed_blocks(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    sizes = torch.tensor(token_bytes(tokenizer)).numpy()
    texts = ["Tom had a red ball.", "Lily saw a big dog in the park.", "The end."]
    stream = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    out = tokenize_batch({"text": texts}, tokenizer, max_length=8, packing=True, sizes=sizes)
    blocks = [list(map(int, b)) for b in out["input_ids"]]
    assert all(len(b) == 8 for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= 8
    assert [i for b in blocks for i in b] == stream[: sum(map(len, blocks))]


def test_num_bytes_counts_the_text_the_targets_cover(tiny_tokenizer_dir):
    # Byte-level BPE: every target token's bytes are exactly text bytes; the first token is no target.
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    sizes = torch.tensor(token_bytes(tokenizer)).numpy()
    texts = ["Once upon a time, Mia said \"hi\" \u2014 caf\u00e9!", "Tom ran."]
    out = tokenize_batch({"text": texts}, tokenizer, max_length=512, packing=False, sizes=sizes)
    for text, ids, num_bytes in zip(texts, out["input_ids"], out["num_bytes"]):
        first = tokenizer.decode(ids[:1])
        assert num_bytes == len(text.encode()) - len(first.encode())


@needs_shared
def test_local_folder_reads_shared_tinystories():
    assert len(load_split(str(TINYSTORIES), "train")) == 7711
    valid = load_split(str(TINYSTORIES), "validation")
    assert len(valid) == 1507
    assert len(load_split(str(TINYSTORIES), "train[:10%]")) == 771
    first = open(TINYSTORIES / "valid.txt", encoding="utf-8").read().split("\n<|endoftext|>\n")[0]
    assert valid[0]["text"] == first


@needs_shared
def test_local_jsonl_and_saved_folder_give_the_same_stories(tmp_path):
    (tmp_path / "jsonl").mkdir()
    for split in ("train", "valid"):
        (tmp_path / "jsonl" / f"{split}.jsonl").symlink_to(TINYSTORIES / f"{split}.jsonl")
    from_txt = load_split(str(TINYSTORIES), "validation[:50]")["text"]
    assert load_split(str(tmp_path / "jsonl"), "validation[:50]")["text"] == from_txt
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": from_txt})}).save_to_disk(tmp_path / "saved")
    assert load_split(str(tmp_path / "saved"), "validation[10:20]")["text"] == from_txt[10:20]


def test_synthetic_source_is_seeded():
    train = load_split("synthetic", "train", synthetic_stories=200)
    assert len(train) == 200 and len(load_split("synthetic", "validation", synthetic_stories=200)) == 10
    assert train["text"] == load_split("synthetic", "train", synthetic_stories=200)["text"]


@pytest.mark.parametrize("dataset, match", [("./no/such/folder", "no such folder"),
                                            pytest.param(str(LLAMA_TOKENIZER), "no file", marks=needs_shared)])
def test_bad_local_source_names_the_path(dataset, match):
    with pytest.raises(DataSourceError, match=match):
        load_split(dataset, "train")


def test_prepare_data_caches_token_ids(tiny_tokenizer_dir, tmp_path, monkeypatch):
    dm = TinyStoriesData(dataset="synthetic", tokenizer=str(tiny_tokenizer_dir), synthetic_stories=100,
                         max_length=64, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["train"]) == 100 and len(dm.splits["validation"]) == 5
    assert all(row[-1] == dm.eos_token_id and len(row) <= 64 for row in dm.splits["train"]["input_ids"])

    again = TinyStoriesData(dataset="synthetic", tokenizer=str(tiny_tokenizer_dir), synthetic_stories=100,
                            max_length=64, cache_dir=str(tmp_path))
    monkeypatch.setattr(TinyStoriesData, "tokenize_split", lambda *a: pytest.fail("tokenized twice"))
    again.prepare_data()
    other = TinyStoriesData(dataset="synthetic", tokenizer=str(tiny_tokenizer_dir), synthetic_stories=100,
                            max_length=32, cache_dir=str(tmp_path))
    assert other.cache_path("train") != again.cache_path("train")


@needs_shared
def test_untokenized_demo_trains_its_own_tokenizer_per_source(tmp_path):
    synthetic = TinyStoriesData(dataset="synthetic", synthetic_stories=300, tokenizer_vocab_size=400,
                                cache_dir=str(tmp_path))
    real = TinyStoriesData(dataset=str(TINYSTORIES), train_split="train[:300]", tokenizer_vocab_size=400,
                           cache_dir=str(tmp_path))
    assert synthetic.vocab_size == real.vocab_size == 400
    assert synthetic.tokenizer.get_vocab() != real.tokenizer.get_vocab()
    assert len(list((tmp_path / "tokenizers").glob("bpe400-*/tokenizer.json"))) == 2


def test_tokenizing_in_several_processes_gives_the_same_ids(tiny_tokenizer_dir, tmp_path):
    splits = []
    for num_proc in (1, 2):
        dm = TinyStoriesData(dataset="synthetic", tokenizer=str(tiny_tokenizer_dir), synthetic_stories=2500,
                             packing=True, max_length=64, num_proc=num_proc, cache_dir=str(tmp_path / str(num_proc)))
        dm.prepare_data()
        dm.setup("fit")
        splits.append([list(map(int, row)) for row in dm.splits["train"]["input_ids"]])
    # Each process packs its own shard, so a shard boundary may add one partial block; the token stream is the same.
    assert [i for row in splits[0] for i in row] == [i for row in splits[1] for i in row]
    assert len(splits[0]) > 100 and 0 <= len(splits[1]) - len(splits[0]) <= 1


def test_synthetic_split_is_written_to_arrow_under_the_given_cache(tmp_path):
    from pathlib import Path

    from tinystories.synthetic import generate_stories

    # Not a Python list: at TinyStoriesV2 scale (2.7M stories) the corpus must stay on disk, memory-mapped.
    ds = load_split("synthetic", "train", synthetic_stories=50, cache_dir=tmp_path)
    assert ds.cache_files and all(Path(f["filename"]).is_relative_to(tmp_path) for f in ds.cache_files)
    assert ds["text"] == list(generate_stories(50, seed=0))


def test_tokenizing_leaves_only_the_cache_and_gives_the_direct_ids(tiny_tokenizer_dir, tmp_path):
    from tinystories.synthetic import generate_stories

    dm = TinyStoriesData(dataset="synthetic", tokenizer=str(tiny_tokenizer_dir), synthetic_stories=60,
                         max_length=64, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    # The stories' and the tokenizer's scratch Arrow files are gone; only the two saved splits remain.
    names = {dm.cache_path("train").name, dm.cache_path("validation").name}
    assert {p.name for p in (tmp_path / "tokenized").iterdir()} == names
    sizes = torch.tensor(token_bytes(dm.tokenizer)).numpy()
    direct = tokenize_batch({"text": list(generate_stories(60, seed=0))}, dm.tokenizer, max_length=64,
                            packing=False, sizes=sizes)
    assert [list(map(int, row)) for row in dm.splits["train"]["input_ids"]] == direct["input_ids"]
    assert [int(n) for n in dm.splits["train"]["num_bytes"]] == direct["num_bytes"]


@needs_shared
def test_validation_batches_stories_of_similar_length_each_once():
    dm = TinyStoriesData(dataset=str(TINYSTORIES), tokenizer=str(LLAMA_TOKENIZER), val_split="validation[:200]",
                         train_split="validation[:8]", max_length=512, batch_size=8)
    dm.prepare_data()
    dm.setup("validate")
    stories = sorted(tuple(row.tolist()) for row in dm.splits["validation[:200]"]["input_ids"])
    seen, pads, tokens, longest = [], 0, 0, []
    for batch in dm.val_dataloader():
        mask = batch["attention_mask"].bool()
        seen += [tuple(ids[keep].tolist()) for ids, keep in zip(batch["input_ids"], mask)]
        pads, tokens = pads + int((~mask).sum()), tokens + mask.numel()
        longest.append(mask.shape[1])
    assert sorted(seen) == stories  # every story once, whole
    assert longest == sorted(longest, reverse=True)  # longest first
    assert pads / tokens < 0.06  # 3.8% on these 200 stories; 37% in file order on the whole split
