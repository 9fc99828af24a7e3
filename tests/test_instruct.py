"""TinyStories-Instruct: the record format, headers derived from stories, the header mask, fine-tuning from a
pretrained model (`model.init_from`), generation from a header and the instruction-following measures."""

import json

import pytest
import torch

from tests.conftest import fit_args, tiny_model
from tinystories import instruct
from tinystories.__main__ import main
from tinystories.checkpoint import weights
from tinystories.errors import UserError
from tinystories.data import TinyStoriesData, collate, tokenize_batch
from tinystories.tokenizer import load_tokenizer

STORY = ('Tom had a red kite. He ran up the windy hill with it.\n"Look, Mom!" he shouted. The kite flew high over '
         'the old oak tree. Tom smiled and felt very happy.')


@pytest.mark.parametrize("record, header, order", [
    ("Features: Dialogue, BadEnding\nWords: quit, oak, gloomy\nSummary: Tom quits.\nRandom sentence: He sat down.\n"
     "Story: \n\nTom sat.", {"features": ["Dialogue", "BadEnding"], "words": ["quit", "oak", "gloomy"],
                             "summary": "Tom quits.", "random_sentence": "He sat down."},
     ["features", "words", "summary", "random_sentence"]),
    ("Random sentence: He sat down.\r\nWords: quit,oak ,gloomy\r\n\r\nStory: \r\n\r\nTom sat.\r\n",
     {"random_sentence": "He sat down.", "words": ["quit", "oak", "gloomy"]}, ["random_sentence", "words"]),
    ("Summary: A short one.\n\n\nStory:\n\n\nTom sat.\n\n", {"summary": "A short one."}, ["summary"]),
    ("Story: \n\nTom sat.", {}, []),
])
def test_records_parse_in_any_order_with_missing_lines_crlf_and_blank_lines(record, header, order):
    parsed, parsed_order, story = instruct.parse(record)
    assert (parsed, parsed_order, story) == (header, order, "Tom sat.")
    assert instruct.parse(instruct.header_text(parsed, parsed_order) + story)[:2] == (header, order)


def test_header_text_is_the_trained_format():
    header = {"words": ["quit", "oak", "gloomy"], "features": ["Dialogue"]}
    assert instruct.header_text(header, ["words", "features"]) == \
        "Words: quit, oak, gloomy\nFeatures: Dialogue\nStory: \n\n"


@pytest.mark.parametrize("record, message", [
    ("Words: a, b\nTom sat.", "no `Story:` line"),
    ("Words: a, b\nMood: happy\nStory: \n\nTom sat.", "header line 2 'Mood: happy' is not Features"),
])
def test_a_header_line_that_cannot_be_parsed_is_named(record, message):
    with pytest.raises(instruct.RecordError, match=message):
        instruct.parse(record)


def test_derived_headers_are_true_of_their_story():
    stories = [STORY, "Lily and Ben played in the garden. They found a shiny blue stone. Ben gave it to Lily."]
    for seed in range(40):
        for story in stories:
            header, order = instruct.derive(story, seed)
            assert order and set(order) == set(header)
            if "words" in header:
                assert len(set(header["words"])) == 3
                for word in header["words"]:
                    assert word in story and word not in instruct.STOP_WORDS and word.islower()
            if "random_sentence" in header:
                assert header["random_sentence"] in story
            assert ("Dialogue" in header.get("features", [])) == ('"' in story) or "features" not in header
            assert "Lily" not in header.get("words", []) and "summary" not in header  # no facts: no summary
    assert instruct.derive(STORY, 3) == instruct.derive(STORY, 3)  # the same story, the same header
    orders = {tuple(instruct.derive(f"{STORY} Story {i} ends here.", 0)[1]) for i in range(60)}
    assert len(orders) > 4  # which lines appear, and their order, vary


def test_instruction_following_on_stories_whose_answers_are_known():
    header = {"words": ["kite", "fly", "stop"], "random_sentence": "Tom smiled and felt very happy.",
              "features": ["Dialogue"]}
    follows = instruct.follows(header, STORY)
    assert follows["words"] == {"kite": True, "fly": False, "stop": False} and not follows["all_words"]
    assert follows["random_sentence"] and follows["dialogue_when_asked"]
    assert instruct.follows(header, "The kites flew. Tom stopped and flies away. Tom smiled and felt very  happy.") \
        == {"words": {"kite": True, "fly": True, "stop": True}, "all_words": True, "random_sentence": True,
            "dialogue_when_asked": False}
    assert instruct.follows({"words": ["carry"]}, "She carried it.") == {
        "words": {"carry": True}, "all_words": True, "no_dialogue_otherwise": True}
    assert not instruct.uses_word("The cat sat.", "at")  # whole words only
    rows = [{"follows": instruct.follows(header, STORY)}, {"follows": instruct.follows({"words": ["kite"]}, STORY)}]
    rates = instruct.follow_rates(rows)
    assert rates["all_words"] == 0.5 and rates["words"] == pytest.approx(2 / 4)
    assert rates["no_dialogue_otherwise"] == 0.0 and rates["stories_with_words"] == 2


def test_the_header_is_masked_out_of_the_loss_and_of_the_bytes(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    header = "Words: kite, hill\nStory: \n\n"
    sizes = __import__("numpy").asarray([1] * len(tokenizer))
    batch = {"header": [header], "text": [STORY]}
    masked = tokenize_batch(batch, tokenizer, 512, False, sizes, mask_header=True)
    full = tokenize_batch(batch, tokenizer, 512, False, sizes, mask_header=False)
    head = len(tokenizer(header, add_special_tokens=False)["input_ids"])
    assert masked["input_ids"] == full["input_ids"]
    assert masked["prompt_tokens"] == [head] and full["prompt_tokens"] == [0]
    assert full["num_bytes"][0] - masked["num_bytes"][0] == head - 1  # each token stands for 1 byte here
    rows = [{"input_ids": masked["input_ids"][0], "num_bytes": 0, "prompt_tokens": head},
            {"input_ids": [5, 6, 7], "num_bytes": 0, "prompt_tokens": 0}]
    labels = collate(rows, tokenizer.pad_token_id)["labels"]
    n = len(masked["input_ids"][0])
    assert (labels[0, :head] == -100).all() and (labels[0, head:] != -100).all()
    assert (labels[1, :n - 3] == -100).all() and labels[1, -3:].tolist() == [5, 6, 7]  # pads, then the sample


def test_the_first_use_of_each_requested_word_carries_the_word_weight(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert instruct.first_uses(STORY, ["kite", "smile", "sun"]) == [STORY.index("kite"), STORY.index("smiled")]
    header = "Words: kite, smile, sun\nStory: \n\n"
    batch = {"header": [header, header], "text": [STORY, "The sun came out."],
             "words": [["kite", "smile", "sun"], ["kite", "smile", "sun"]]}
    sizes = __import__("numpy").asarray([1] * len(tokenizer))
    samples = tokenize_batch(batch, tokenizer, 512, False, sizes)

    def starts(ids, uses, words):  # the weighted token is the word's first (this small BPE splits words)
        firsts = [tokenizer.decode(int(ids[p])).strip() for p in uses]
        return len(firsts) == len(words) and all(f and w.startswith(f) for f, w in zip(firsts, words))

    assert starts(samples["input_ids"][0], samples["word_uses"][0], ["kite", "smiled"])
    assert starts(samples["input_ids"][1], samples["word_uses"][1], ["sun"])
    # Packed: a use stays at its token, in its block, where its record's header is in that block too (a use cut off
    # from its header teaches nothing about headers)
    first, second = (len(ids) for ids in samples["input_ids"])
    packed = tokenize_batch(batch, tokenizer, first + 4, True, sizes)  # the second header starts in block 0
    flat = [int(i) for ids in packed["input_ids"] for i in ids]
    assert flat == [int(i) for ids in samples["input_ids"] for i in ids][:len(flat)]
    uses = [block * (first + 4) + p for block, u in enumerate(packed["word_uses"]) for p in u]
    assert uses == [int(p) for p in samples["word_uses"][0]]  # "sun" is in block 1, its header in block 0
    packed = tokenize_batch(batch, tokenizer, first, True, sizes)  # each record in a block of its own
    assert packed["word_uses"] == [samples["word_uses"][0], samples["word_uses"][1]]

    rows = [{k: samples[k][i] for k in samples} for i in range(2)]
    batch = collate(rows, tokenizer.pad_token_id, word_weight=5.0)
    pad = batch["input_ids"].shape[1] - len(rows[1]["input_ids"])
    assert batch["loss_weights"][0].nonzero().numel() == batch["input_ids"].shape[1]
    assert (batch["loss_weights"] == 5).nonzero().tolist() == [[0, p] for p in rows[0]["word_uses"]] + [
        [1, pad + p] for p in rows[1]["word_uses"]]
    assert "loss_weights" not in collate(rows, tokenizer.pad_token_id)
    # The model's training loss weighs exactly those targets: the weighted sum less the plain one is 4 times theirs
    model = tiny_model(vocab_size=len(tokenizer))
    plain, count = model.nats(batch)
    weighted, _ = model.nats(batch, weighted=True)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(batch["input_ids"], batch["attention_mask"], batch["position_ids"]), -1)
    marked = -sum(log_probs[row, p - 1, batch["input_ids"][row, p]]
                  for row, p in (batch["loss_weights"] == 5).nonzero())
    torch.testing.assert_close(weighted - plain, 4 * marked, rtol=1e-4, atol=1e-4)


def test_word_weight_needs_instruct_data():
    with pytest.raises(UserError, match="data.word_weight is 3.0; .* only with data.instruct"):
        TinyStoriesData(word_weight=3.0)
    with pytest.raises(UserError, match="data.word_weight is -1"):
        TinyStoriesData(instruct="derive", word_weight=-1)


def write_records(path, records):
    path.mkdir(parents=True, exist_ok=True)
    for split, texts in records.items():
        (path / f"{split}.txt").write_text("".join(t + "\n<|endoftext|>\n" for t in texts), encoding="utf-8")


def test_records_load_through_the_data_module_and_bad_ones_are_named(tmp_path, tiny_tokenizer_dir):
    record = "Words: kite, hill\nFeatures: Dialogue\nStory: \n\n" + STORY
    write_records(tmp_path / "ok", {"train": [record] * 8, "valid": [record] * 2})
    dm = TinyStoriesData(dataset=str(tmp_path / "ok"), tokenizer=str(tiny_tokenizer_dir), instruct="records",
                         loss_on="story", max_length=256, batch_size=2, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    head = len(dm.tokenizer("Words: kite, hill\nFeatures: Dialogue\nStory: \n\n",
                            add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :head] == -100).all() and (batch["labels"][0, head:] != -100).all()
    write_records(tmp_path / "bad", {"train": [record, record, "Words: a\nColour: red\nStory: \n\nTom."],
                                     "valid": [record]})
    with pytest.raises(SystemExit,
                       match=r"^error: data.dataset .*bad \(train\): record 3: header line 2 'Colour: red'"):
        main(fit_args(tmp_path / "run", tiny_tokenizer_dir, "--data.dataset", str(tmp_path / "bad"),
                      "--data.instruct", "records", "--trainer.max_steps", "1"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_init_from_starts_from_exactly_those_weights_with_a_fresh_optimizer(trained_ckpt, tmp_path,
                                                                               tiny_tokenizer_dir):
    main(fit_args(tmp_path, tiny_tokenizer_dir, "--model.init_from", str(trained_ckpt), "--data.instruct", "derive",
                  "--data.loss_on", "story", "--data.word_weight", "5", "--trainer.max_steps", "3",
                  "--model.optimization.warmup_steps", "2",
                  "--trainer.callbacks+=" + json.dumps({"class_path": "tests.helpers.RecordStart",
                                                        "init_args": {"out_dir": str(tmp_path)}})))
    start = torch.load(tmp_path / "start.pt", weights_only=True)
    assert start["global_step"] == 0 and start["optimizer_state"] == 0 and start["lr"] == 0.0  # fresh, warming up
    pretrained = weights(trained_ckpt, "model.init_from")
    assert start["weights"].keys() == pretrained.keys()
    for name, tensor in pretrained.items():
        torch.testing.assert_close(start["weights"][name], tensor, rtol=0, atol=0)
    ckpt = torch.load(next(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["init_from"] == str(trained_ckpt)


def test_init_from_that_does_not_fit_is_one_line(trained_ckpt, tmp_path, tiny_tokenizer_dir):
    from tinystories.synthetic import generate_stories
    from tinystories.tokenizer import train_bpe

    for extra, message in [
        (["--model.init_from", str(tmp_path / "none.ckpt")], "model.init_from .*none.ckpt: no such file or folder"),
        (["--model.init_from", str(tiny_tokenizer_dir / "tokenizer.json")],
         "model.init_from .*tokenizer.json: truncated or not a checkpoint"),
        (["--model.init_from", str(trained_ckpt), "--model.architecture.hidden_size", "64"],
         r"model.init_from .*: was trained with hidden_size 32 \(config: 64\)"),
    ]:
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            main(fit_args(tmp_path / "run", tiny_tokenizer_dir, *extra, "--trainer.max_steps", "1"))
    other = tmp_path / "tok"
    train_bpe(generate_stories(200, seed=5), 512, other)  # the same size, other merges
    with pytest.raises(SystemExit, match="^error: model.init_from .*: was trained with another tokenizer"):
        main(fit_args(tmp_path / "run", other, "--model.init_from", str(trained_ckpt), "--trainer.max_steps", "1"))
    assert not (tmp_path / "run").exists()


def test_generate_builds_the_header_and_writes_the_story(trained_ckpt, tmp_path, capsys):
    main(["generate", "--ckpt_path", str(trained_ckpt), "--words", "quit,oak,gloomy", "--features",
          "Dialogue,BadEnding", "--summary", "A boy quits.", "--max_new_tokens", "10", "--seed", "1", "--device", "cpu",
          "--output", str(tmp_path / "out.jsonl")])
    shown = capsys.readouterr().out
    assert "Features: Dialogue, BadEnding\nWords: quit, oak, gloomy\nSummary: A boy quits.\nStory: \n\n" in shown
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["prompt"] == ("Features: Dialogue, BadEnding\nWords: quit, oak, gloomy\nSummary: A boy quits.\n"
                             "Story: \n\n")
    for args, message in [(["--words", "quit,,oak"], "--words 'quit,,oak': an empty item"),
                          (["--features", "Dialog"], "--features: unknown Dialog"),
                          (["--words", "a", "--prompt", "Tom"], "not both")]:
        with pytest.raises(SystemExit, match=message):
            main(["generate", "--ckpt_path", str(trained_ckpt), *args])


def test_evaluate_instruct_reports_how_often_stories_follow_their_headers(trained_ckpt, tmp_path):
    import shutil

    ckpt = tmp_path / "tiny.ckpt"
    shutil.copy(trained_ckpt, ckpt)
    records = ["Words: sun, play, happy\nStory: \n\nx", "Features: Dialogue\nRandom sentence: Tom ran.\nStory: \n\nx"]
    (tmp_path / "headers.txt").write_text("".join(r + "\n<|endoftext|>\n" for r in records))
    main(["evaluate", "--instruct", "--ckpt_path", str(ckpt), "--prompts", str(tmp_path / "headers.txt"),
          "--out_dir", str(tmp_path / "eval"), "--num_samples", "3", "--max_new_tokens", "30", "--device", "cpu"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows[::3]] == ["Words: sun, play, happy\nStory: \n\n",
                                                "Features: Dialogue\nRandom sentence: Tom ran.\nStory: \n\n"]
    rates = summary["instruct"]
    assert rates["stories"] == 6 and rates["stories_with_words"] == 3
    assert rates["all_words"] == sum(r["follows"]["all_words"] for r in rows[:3]) / 3
    for key in ("all_words", "words", "random_sentence", "dialogue_when_asked"):
        assert 0 <= rates[key] <= 1
