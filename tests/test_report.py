"""The evaluation page: one self-contained file, untrusted text escaped, the numbers and histograms true to the rows."""

import random
import re

from tinystories import report

GRADES = ("grammar", "creativity", "consistency", "plot")
PAPER = {"hidden 256, 8 layers": {"grammar": 7.72, "creativity": 6.54, "consistency": 8.02, "plot": 7.23},
         "hidden 64, 12 layers": {"grammar": 6.19, "creativity": 4.84, "consistency": 4.75, "plot": 4.39}}
BEGINNINGS = ["Once upon a time, there was a little girl named Lily. She loved to play with her ball in the ",
              "Tom and Jane are friends. One day, Jane goes to Tom's house. Tom has a big pot of soup.\nJane says",
              "Sara and Ben were playing in the park. They saw a big red kite stuck in a tree. Sara said, \"Let's"]
ENDINGS = [" park. One day, the ball went over the fence. Lily was sad.\n\n\"Can you help me?\" she asked a dog. "
           "The dog wagged its tail and found the ball. Lily hugged the dog and they were friends forever.",
           " \"Can I have some soup?\" Tom says \"Yes, but it is hot.\" Jane waits and then they eat together.",
           " get it!\" They pulled and pulled and pulled and pulled and pulled and pulled and pulled and pulled"]


def fake_evaluation(judged: bool = True, prompts: int = 44, samples: int = 3, seed: int = 0) -> tuple[dict, list]:
    """A realistic summary and rows: a few ungraded replies, one half grade, one script in a completion."""
    rng, rows = random.Random(seed), []
    for pid in range(prompts):
        for sample in range(samples):
            ending = rng.choice(ENDINGS)
            grades = None
            if judged and rng.random() > 0.08:
                grades = {g: float(min(10, max(0, round(rng.gauss(6.5, 1.8))))) for g in GRADES}
                grades["age_group"] = rng.choice(["A", "B", "B", "C", "C", "D", None])
            rows.append({"prompt_id": pid, "prompt": BEGINNINGS[pid % 3], "sample": sample, "completion": ending,
                         "finished": "pulled and pulled" not in ending, "new_tokens": 40 + 7 * sample,
                         "words": len(ending.split()), "repetition": 0.6 if "pulled" in ending else 0.0,
                         "copied": rng.choice([0.0, 0.12, 0.35, None]), "grades": grades,
                         "judge_reply": grades and "Grammar: 8/10, Creativity: 6/10, Consistency: 7/10, Plot: 7/10, "
                                                   "Age group: C", "judge_assessment": grades and "The student "
                                                   "completes the split sentence <well> & keeps the characters."})
    rows[0]["completion"] = " park.<script>alert(1)</script> Lily & Tom \"played\"."
    if judged:
        rows[1]["grades"] = {**(rows[1]["grades"] or {}), **{g: 7.5 for g in GRADES}, "age_group": "E"}
    return summary_of(rows, judged), rows


def summary_of(rows: list[dict], judged: bool) -> dict:
    graded = [r["grades"] for r in rows if r["grades"]]
    means = {}
    for g in GRADES:
        vals = [x[g] for x in graded]
        mean = sum(vals) / len(vals) if vals else None
        sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
        means[g] = {"mean": mean, "stderr": sd and sd / len(vals) ** 0.5, "n": len(vals)}
    ages = {k: sum(x["age_group"] == k for x in graded) for k in "ABCDEF"}
    ages["none"] = sum(x["age_group"] is None for x in graded)
    return {"checkpoint": {"path": "runs/tinystories-20m/checkpoints/last.ckpt", "step": 30000, "sha256": "ab12" * 16},
            "settings": {"prompts": "roneneldan/TinyStories: Evaluation prompts.yaml", "num_prompts": 44,
                         "num_samples": 3, "temperature": 1.0, "max_new_tokens": 400, "seed": 0, "batch_size": 32},
            "judge": {"base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-7b-instruct"} if judged else None,
            "completions": len(rows), "graded": len(graded), "ungraded": len(rows) - len(graded), "means": means,
            "age_groups": ages, "paper": PAPER,
            "judge_free": {"finished": 0.67, "words": 31.4, "repetition": 0.2, "distinct_1": 0.41, "distinct_2": 0.72,
                           "distinct_3": 0.85, "copied": 0.16},
            "definitions": {"repetition": "1 - distinct word 4-grams / word 4-grams, inside one completion",
                            "distinct_n": "distinct word n-grams / all word n-grams, over one prompt's samples",
                            "copied": "largest share of a completion's word 8-grams found in one training story",
                            "stderr": "sample standard deviation / sqrt(n)"}}


def bars(page: str) -> dict[str, list[int]]:
    svgs = re.findall(r'<svg class="histogram" data-grade="(\w+)"(.*?)</svg>', page, re.S)
    return {grade: [int(n) for n in re.findall(r'<rect class="bar" data-bin="\d+" data-count="(\d+)"', svg)]
            for grade, svg in svgs}


def test_page_is_one_file_with_nothing_from_elsewhere(tmp_path):
    summary, rows = fake_evaluation()
    path = tmp_path / "report.html"
    report.write_html(path, summary, rows)
    page = path.read_text(encoding="utf-8")
    assert page == report.render(summary, rows)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left behind
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)


def test_untrusted_text_is_escaped():
    summary, rows = fake_evaluation()
    rows[2]["judge_reply"] = '<img src=x onerror="alert(2)">'
    summary["checkpoint"]["path"] = "runs/<b>odd</b>.ckpt"
    page = report.render(summary, rows)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page and "<img" not in page
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "&lt;well&gt; &amp; keeps" in page


def test_paper_rows_means_and_counts_appear():
    summary, rows = fake_evaluation()
    page = report.render(summary, rows)
    assert page.count("TinyStories paper, Fig. 4") >= 2
    for values in PAPER.values():
        assert all(f"{v:.2f}" in page for v in values.values())
    for stat in summary["means"].values():
        assert f"{stat['mean']:.2f} ± {stat['stderr']:.2f}" in page and f"n={stat['n']}" in page
    assert f"<strong>{summary['graded']}</strong> of {len(rows)}" in page
    assert f"<strong>{summary['ungraded']}</strong> ungraded" in page
    assert page.count('class="chip none">ungraded<') == summary["ungraded"] > 0
    assert "runs/tinystories-20m/checkpoints/last.ckpt" in page and "30,000" in page
    assert "qwen2.5-7b-instruct" in page and "white-space: pre-wrap" in page


def test_histograms_have_11_bins_that_count_the_rows():
    summary, rows = fake_evaluation()
    counted = bars(report.render(summary, rows))
    assert set(counted) == set(GRADES)
    for grade, counts in counted.items():
        assert len(counts) == 11
        expected = [0] * 11
        for row in rows:
            if row["grades"]:
                expected[int(row["grades"][grade] + 0.5)] += 1  # 7.5 goes to bin 8
        assert counts == expected and sum(counts) == summary["graded"]


def test_without_a_judge():
    summary, rows = fake_evaluation(judged=False)
    page = report.render(summary, rows)
    assert "No judge graded this evaluation" in page
    assert page.index("Judge-free measures") < page.index("Grades (out of 10)")
    assert "TinyStories paper, Fig. 4" in page and "7.72" in page
    assert bars(page) == {} and "Age group the judge guessed" not in page  # nothing to plot or count
    assert page.count('class="chip none">ungraded<') == len(rows) and "<details>" not in page
