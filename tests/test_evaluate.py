"""`python -m tinystories evaluate`: prompts, generation, judge-free measures, the judge through a real loopback
server and the real `openai` client, reruns that ask nothing, TensorBoard, and one-line errors."""

import json
import shutil
import statistics

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import SHARED, needs_shared
from tests.judge_server import KEY, MODEL, JudgeServer, planned
from tinystories import measures
from tinystories.atomic import UMASK
from tinystories.__main__ import main
from tinystories.judge import parse_grades
from tinystories.prompts import load_prompts

PROMPTS = ["Once upon a time, there was a little", "Tom and his dog went to the", "Lily saw a big red "]


@pytest.fixture(scope="module")
def ckpt(trained_ckpt, tmp_path_factory):
    """The suite's checkpoint outside its run folder, so evaluating it logs nothing into that run."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    shutil.copy(trained_ckpt, path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def evaluate(ckpt, out_dir, prompts_file, *extra):
    main(["evaluate", "--ckpt_path", str(ckpt), "--out_dir", str(out_dir), "--prompts", str(prompts_file),
          "--num_samples", "4", "--max_new_tokens", "24", "--device", "cpu", *extra])
    rows = [json.loads(line) for line in (out_dir / "completions.jsonl").read_text().splitlines()]
    return rows, json.loads((out_dir / "summary.json").read_text())


@needs_shared
def test_the_papers_prompt_file_loads_as_44_prompts_exactly_as_written():
    source = SHARED / "eval" / "Evaluation prompts.yaml"
    prompts = load_prompts(str(source))
    assert len(prompts) == 44 == len(set(prompts))
    assert prompts == yaml.safe_load(source.read_text(encoding="utf-8"))  # nothing stripped or changed
    assert any(p.endswith(" ") for p in prompts) and any("vey busy" in p for p in prompts)


def test_prompts_from_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first one \nsecond\n\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "a.txt")) == ["first one ", "second"]
    (tmp_path / "b.txt").write_text("A story\nover two lines \n<|endoftext|>\nAnother\n<|endoftext|>\n")
    assert load_prompts(str(tmp_path / "b.txt")) == ["A story\nover two lines ", "Another"]
    (tmp_path / "c.jsonl").write_text('{"prompt": "One day, "}\n{"text": "Tom"}\n')
    assert load_prompts(str(tmp_path / "c.jsonl")) == ["One day, ", "Tom"]


def test_judge_free_measures_on_stories_whose_answers_are_known():
    assert measures.repetition("the cat sat on the mat") == 0.0
    # 10 words, 7 4-grams: "a b c a" "b c a b" "c a b c" then repeats -> 3 distinct of 7
    assert measures.repetition("a b c a b c a b c a") == pytest.approx(1 - 3 / 7)
    assert measures.repetition("Tom ran.") == 0.0
    assert measures.distinct(["a b", "a b", "c d"], 2) == pytest.approx(2 / 3)
    assert measures.distinct(["Tom ran home", "tom RAN home!"], 1) == pytest.approx(3 / 6)
    story = "once upon a time there was a girl named lily who loved to play with her red ball in the park"
    index = measures.NgramIndex([story, "a completely different story about a dog and a cat in the big garden"])
    assert index.copied(story) == 1.0
    assert index.copied("lily who loved to play with her red ball in the park every day and night") == \
        pytest.approx(5 / 9)  # 16 words: 9 8-grams, the first 5 of them in the first story
    assert index.copied("too short") is None


@pytest.mark.parametrize("reply, expected", [
    ("Grammar: 8/10, Creativity: 7/10, Consistency: 9/10, Plot: 6/10, Age group: C (6-7)", (8, 7, 9, 6, "C")),
    ("**Grammar:** 7.5/10\n**Creativity:** 6 / 10\n**Consistency:** 8 out of 10\n**Plot makes sense:** 5\nAge: B",
     (7.5, 6, 8, 5, "B")),
    ('{"grammar": 9, "creativity": 8, "consistency": 7, "plot": 6, "age_group": "A"}', (9, 8, 7, 6, "A")),
    ("The grammar is fine overall, I cannot give numbers.", None),
    ("Grammar: 8/10, Creativity: 7/10", None),  # not all four: ungraded
])
def test_grades_are_read_from_what_the_judge_wrote(reply, expected):
    grades = parse_grades(reply)
    names = ("grammar", "creativity", "consistency", "plot", "age_group")
    assert (None if grades is None else tuple(grades[n] for n in names)) == expected


def test_judged_evaluation_retries_then_reruns_without_a_request(ckpt, tmp_path, prompts_file):
    out = tmp_path / "eval"
    with JudgeServer(slow_seconds=3) as server:
        rows, summary = evaluate(ckpt, out, prompts_file, "--judge_base_url", server.url, "--judge_model",
                                 MODEL, "--judge_timeout", "1", "--judge_concurrency", "4")
        assert len(rows) == 12 and summary["completions"] == 12
        for row in rows:  # the grades read are exactly those the server sent
            assert row["grades"] == server.sent[row["completion"]], row["judge_reply"]
            assert row["judge_reply"] == planned(row["completion"])[0]
        ungraded = sum(server.sent[r["completion"]] is None for r in rows)
        assert (summary["graded"], summary["ungraded"]) == (12 - ungraded, ungraded)
        graded = [r["grades"] for r in rows if r["grades"]]
        for name in ("grammar", "creativity", "consistency", "plot"):
            assert summary["means"][name]["mean"] == pytest.approx(statistics.fmean(g[name] for g in graded))
            assert summary["means"][name]["n"] == len(graded)
        assert sum(summary["age_groups"].values()) == len(graded)
        failures = {planned(r["completion"])[2] for r in rows}
        statuses = [status for kind, status in server.requests if kind == "grade"]
        assert {500, 429} & set(statuses) and statuses.count(200) == 12  # failed first, then retried
        if "slow" in failures:  # the slow reply was abandoned at the 1 s timeout and asked again
            assert max(server.attempts.values()) >= 2
        made = len(server.requests)
        rows_again, summary_again = evaluate(ckpt, out, prompts_file, "--judge_base_url", server.url,
                                             "--judge_model", MODEL)
        assert len(server.requests) == made  # nothing asked: every reply is kept in out_dir
        assert rows_again == rows and summary_again == summary
    assert (out / "report.html").is_file() and len(list((out / "judge").glob("*.json"))) == 12


def test_without_a_judge_the_judge_free_summary_is_written(ckpt, tmp_path, prompts_file, capsys):
    rows, summary = evaluate(ckpt, tmp_path / "eval", prompts_file, "--train_data", "synthetic",
                             "--train_split", "train[:200]")
    assert summary["judge"] is None and summary["graded"] == 0 and summary["ungraded"] == 12
    assert {r["prompt"] for r in rows} == set(PROMPTS) and [r["sample"] for r in rows[:4]] == [0, 1, 2, 3]
    for row in rows:
        assert row["grades"] is None and row["completion"] and row["words"] == len(measures.words(row["completion"]))
        assert 0 <= row["repetition"] <= 1 and (row["copied"] is None or 0 <= row["copied"] <= 1)
    free = summary["judge_free"]
    assert free["finished"] == pytest.approx(statistics.fmean(r["finished"] for r in rows))
    assert free["repetition"] == pytest.approx(statistics.fmean(r["repetition"] for r in rows))
    assert summary["checkpoint"]["step"] == 120 and summary["settings"]["num_samples"] == 4
    assert "12 completions, 0 graded, 12 ungraded" in capsys.readouterr().out
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "eval").iterdir()}
    assert modes == dict.fromkeys(["completions.jsonl", "run.json", "summary.json", "report.html"], 0o666 & ~UMASK)


def test_checkpoint_in_a_run_folder_logs_eval_scalars_at_its_step(trained_run, tmp_path, prompts_file):
    run = tmp_path / "version_0"
    shutil.copytree(trained_run, run)
    evaluate(run / "checkpoints" / "last.ckpt", tmp_path / "eval", prompts_file)
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"eval/finished", "eval/repetition", "eval/distinct_2", "eval/words"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval/finished")] == [120]


def test_compare_prints_one_table(ckpt, tmp_path, prompts_file, capsys):
    evaluate(ckpt, tmp_path / "a", prompts_file)
    evaluate(ckpt, tmp_path / "b", prompts_file, "--seed", "1")
    capsys.readouterr()
    main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| evaluation | grammar |") and len(table) == 2 + 2 + 2
    assert str(tmp_path / "a") in table[2] and "paper, hidden 256, 8 layers | 7.72" in table[4]


def one_line_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_judge_that_is_unreachable_or_wrong_stops_before_generating(ckpt, tmp_path, prompts_file, capsys,
                                                                     monkeypatch):
    base = ["evaluate", "--ckpt_path", str(ckpt), "--prompts", str(prompts_file), "--device", "cpu"]
    with JudgeServer(key=KEY) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        message = one_line_error([*base, "--out_dir", str(tmp_path / "a"), "--judge_base_url", server.url,
                                  "--judge_model", "no-such-model"], capsys)
        assert "--judge_model no-such-model" in message and "not found (404" in message
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        message = one_line_error([*base, "--out_dir", str(tmp_path / "b"), "--judge_base_url", server.url,
                                  "--judge_model", MODEL], capsys)
        assert "refused the key (401" in message
        url = server.url
    message = one_line_error([*base, "--out_dir", str(tmp_path / "c"), "--judge_base_url", url, "--judge_model",
                              MODEL], capsys)  # the server is gone: nothing listens there
    assert "does not answer" in message
    assert not any(tmp_path.glob("[abc]")), "nothing written"


def test_bad_input_is_one_line_and_writes_nothing(ckpt, tmp_path, prompts_file, capsys):
    base = ["evaluate", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out")]
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "dict.yaml").write_text("prompt: Once upon a time\n")
    for extra, expected in [
        (["--prompts", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
        (["--prompts", str(tmp_path / "empty.txt")], "empty.txt: no prompts in it"),
        (["--prompts", str(tmp_path / "dict.yaml")], "dict.yaml: the YAML must be a list of strings"),
        (["--prompts", str(prompts_file), "--num_samples", "0"], "--num_samples, --max_new_tokens and --batch_size"),
    ]:
        assert expected in one_line_error([*base, *extra], capsys)
    assert not (tmp_path / "out").exists()
    evaluate(ckpt, tmp_path / "out", prompts_file)
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["model.lm_head.weight"] += 1  # other weights: another checkpoint for the out_dir
    torch.save(checkpoint, other)
    before = (tmp_path / "out" / "summary.json").read_text()
    assert "holds the evaluation of another checkpoint" in one_line_error(
        ["evaluate", "--ckpt_path", str(other), "--out_dir", str(tmp_path / "out"), "--prompts", str(prompts_file),
         "--num_samples", "4", "--max_new_tokens", "24"], capsys)
    assert (f"holds an evaluation with other settings (--num_samples 4 there, 5 here); to reuse it, run with its "
            f"settings, or give these settings their own folder, e.g. --out_dir {tmp_path / 'out-num_samples5'} "
            "(nothing was changed)") in one_line_error(
        [*base, "--prompts", str(prompts_file), "--num_samples", "5", "--max_new_tokens", "24"], capsys)
    assert (tmp_path / "out" / "summary.json").read_text() == before


def test_compare_shows_instruct_shares(tmp_path, capsys):
    """An --instruct evaluation's shares of stories that follow their headers get columns; other evaluations `-`."""
    means = {c: {"mean": None, "stderr": None, "n": 0} for c in ("grammar", "creativity", "consistency", "plot")}
    free = {"finished": 0.9, "words": 100.0, "repetition": 0.01, "distinct_1": 0.4, "distinct_2": 0.8,
            "distinct_3": 0.9, "copied": None}
    shares = {"all_words": 0.27, "words": 0.626, "random_sentence": 0.0, "dialogue_when_asked": 0.58,
              "no_dialogue_otherwise": 0.42, "stories": 10, "stories_with_words": 9}
    for name, extra in (("plain", {}), ("instruct", {"instruct": shares})):
        (tmp_path / name).mkdir()
        summary = {"completions": 10, "graded": 0, "means": means, "judge_free": free, **extra}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    main(["evaluate", "--compare", str(tmp_path / "plain"), str(tmp_path / "instruct")])
    header, _, plain, instruct, *paper = capsys.readouterr().out.splitlines()
    assert header.endswith("| all_words | words | random_sentence | dialogue_when_asked | no_dialogue_otherwise |")
    assert plain.endswith("| 0.9 | 0.01 | 0.8 | - | - | - | - | - | - |")
    assert instruct.endswith("| 0.27 | 0.626 | 0 | 0.58 | 0.42 |")
    assert len(paper) == 2 and all(row.count("|") == header.count("|") for row in (plain, instruct, *paper))
