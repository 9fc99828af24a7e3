"""An evaluation as one self-contained HTML page: no scripts, no fonts or images from elsewhere; it works offline.

    from tinystories import report
    report.write_html(out_dir / "report.html", summary, rows)   # atomic: a temp file, then os.replace
    text = report.render(summary, rows)                         # the same page as a string

`rows` are the lines of completions.jsonl and `summary` is summary.json, both written by `python -m tinystories
evaluate`. The page holds: the checkpoint, settings and judge; the four mean grades (± standard error) beside the
TinyStories paper's Fig. 4 rows; how many completions were graded; the judge's age groups; the judge-free measures
with their definitions; a histogram of each grade (inline SVG); then every story beginning with its completions,
grades and the judge's reply. All text from the model or the judge is escaped.
"""

import html
import math
from pathlib import Path
from typing import Optional

from tinystories.atomic import atomic_write

GRADES = ("grammar", "creativity", "consistency", "plot")
AGES = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
PAPER_LABEL = "TinyStories paper, Fig. 4"
FREE = {  # key: (label, how to show it, definition key or own text)
    "finished": ("finished", "percent", "share of completions that ended on their own, before max_new_tokens"),
    "words": ("words", "1", "mean number of words in a completion"),
    "repetition": ("repetition", "3", "repetition"),
    "distinct_1": ("distinct-1", "3", "distinct_n"),
    "distinct_2": ("distinct-2", "3", "distinct_n"),
    "distinct_3": ("distinct-3", "3", "distinct_n"),
    "copied": ("copied", "3", "copied"),
}
BAR_W, BAR_GAP, LEFT, PLOT_H, SVG_H = 18, 4, 6, 110, 160
SVG_W = LEFT + 11 * (BAR_W + BAR_GAP) + 2

CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --soft: #f6f8fa; --accent: #0969da; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; } h3 { font-size: 16px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 36px 0 12px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.muted { color: var(--muted); } .small { font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours td { font-weight: 600; background: #ddf4ff; } tr.paper td { color: var(--muted); }
tr td:first-child { white-space: nowrap; } td.num .n { display: block; font-weight: 400; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.notice { border-left: 4px solid var(--warn); background: #fff8c5; padding: 10px 14px; margin: 16px 0; }
.grid { display: flex; flex-wrap: wrap; gap: 16px 40px; align-items: flex-start; }
.hists { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 16px; }
.hist { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; margin: 0; }
.hist svg { display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); } svg .bar { fill: var(--accent); }
.agebar { display: inline-block; height: 10px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.prompt { border: 1px solid var(--line); border-radius: 8px; margin: 20px 0; padding: 14px 16px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.beginning { background: var(--soft); border-radius: 6px; padding: 8px 12px; font-style: italic; }
.sample { border-top: 1px dashed var(--line); margin-top: 12px; padding-top: 10px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 6px; font-size: 13px; }
.chip { border: 1px solid var(--line); border-radius: 999px; padding: 0 8px; background: #fff; }
.chip.ok { border-color: #1a7f37; color: #1a7f37; } .chip.cut { border-color: #cf222e; color: #cf222e; }
.chip.grade { background: #ddf4ff; border-color: #54aeff; } .chip.none { color: var(--muted); font-style: italic; }
details { margin-top: 8px; font-size: 14px; } summary { cursor: pointer; color: var(--accent); }
details h4 { margin: 10px 0 4px; } details .text { background: var(--soft); padding: 8px 12px; border-radius: 6px; }
"""


def e(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Optional[float], digits: str = "2") -> str:
    if value is None:
        return "—"
    if digits == "percent":
        return f"{100 * value:.1f}%"
    return f"{value:.{digits}f}"


def score(grade: Optional[float]) -> str:
    return "—" if grade is None else f"{grade:g}" if float(grade).is_integer() else f"{grade:.1f}"


def bin_of(grade: float) -> int:
    """A grade's histogram bin, 0 to 10: non-integer grades rounded half up."""
    return min(10, max(0, math.floor(grade + 0.5)))


def grade_counts(rows: list[dict], grade: str) -> list[int]:
    counts = [0] * 11
    for row in rows:
        value = (row.get("grades") or {}).get(grade)
        if value is not None:
            counts[bin_of(value)] += 1
    return counts


def write_html(path: Path, summary: dict, rows: list[dict]) -> None:
    with atomic_write(Path(path)) as f:
        f.write(render(summary, rows))


def render(summary: dict, rows: list[dict]) -> str:
    judged = summary.get("judge") is not None
    grades = [headline(summary), histograms(rows)] if judged else [headline(summary)]  # nothing to plot without one
    free = judge_free(summary) + instruct_section(summary)
    body = [header(summary), *(grades + [free] if judged else [free] + grades), prompts(rows)]
    title = f"TinyStories evaluation: {Path(summary['checkpoint']['path']).name}"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def header(summary: dict) -> str:
    ck, st, judge = summary["checkpoint"], summary["settings"], summary.get("judge")
    step = "unknown" if ck.get("step") is None else f"{ck['step']:,}"
    meta = {
        "checkpoint": f"<code>{e(ck['path'])}</code>", "step": e(step), "sha256": f"<code>{e(ck['sha256'])}</code>",
        "prompts": f"{e(st['prompts'])} ({st['num_prompts']} beginnings × {st['num_samples']} samples)",
        "sampling": e(f"temperature {st['temperature']}, at most {st['max_new_tokens']} new tokens, "
                      f"seed {st['seed']}, batch size {st['batch_size']}"),
        "judge": (f"<code>{e(judge['model'])}</code> at <code>{e(judge['base_url'] or 'OpenAI')}</code>"
                  if judge else "none"),
    }
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta.items())
    notice = "" if judge else ('<p class="notice"><strong>No judge graded this evaluation.</strong> The judge-free '
                               "measures below are all it has; the paper's grades are shown for reference.</p>")
    return f"<header>\n<h1>TinyStories evaluation</h1>\n<dl class=\"meta\">{rows}</dl>\n{notice}\n</header>"


def mean_cell(stat: dict) -> str:
    if stat.get("mean") is None:
        return '<td class="num muted">—</td>'
    err = "" if stat.get("stderr") is None else f" ± {stat['stderr']:.2f}"
    return f'<td class="num">{stat["mean"]:.2f}{err} <span class="n muted small">n={stat["n"]}</span></td>'


def headline(summary: dict) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{g}</th>" for g in GRADES) + "</tr>"
    label = "this checkpoint" if summary.get("judge") else "this checkpoint (no judge)"
    ours = f'<tr class="ours"><td>{label}</td>' + "".join(mean_cell(summary["means"][g]) for g in GRADES)
    paper = "".join(f'<tr class="paper"><td>{PAPER_LABEL}: {e(name)}</td>'
                    + "".join(f'<td class="num">{vals[g]:.2f}</td>' for g in GRADES) + "</tr>"
                    for name, vals in summary["paper"].items())
    table = f"<section>\n<h2>Grades (out of 10)</h2>\n<table>{head}{ours}</tr>{paper}</table>\n"
    counts = (f"<p><strong>{summary['graded']}</strong> of {summary['completions']} completions graded; "
              f"<strong>{summary['ungraded']}</strong> ungraded")
    if not summary.get("judge"):
        return f"{table}{counts}.</p>\n</section>"
    stderr = e(summary["definitions"].get("stderr", ""))
    return (f'{table}<p class="muted small">± is the standard error: {stderr}</p>\n'
            f"{counts} (left out of the means).</p>\n{age_groups(summary)}\n</section>")


def age_groups(summary: dict) -> str:
    ages = summary["age_groups"]
    top = max(ages.values(), default=0) or 1
    cells = [(f"{k}: {v}", ages.get(k, 0)) for k, v in AGES.items()] + [("no age group", ages.get("none", 0))]
    body = "".join(f'<tr><td>{e(label)}</td><td class="num">{n}</td>'
                   f'<td style="width:220px"><span class="agebar" style="width:{200 * n / top:.0f}px"></span></td></tr>'
                   for label, n in cells)
    head = "<tr><th>age</th><th>completions</th><th></th></tr>"
    return f"<h3>Age group the judge guessed</h3>\n<table>{head}{body}</table>"


def judge_free(summary: dict) -> str:
    free, defs = summary["judge_free"], summary["definitions"]
    body = "".join(f'<tr><td>{e(label)}</td><td class="num">{fmt(free.get(key), digits)}</td>'
                   f'<td class="small">{e(defs.get(define, define))}</td></tr>'
                   for key, (label, digits, define) in FREE.items())
    return (f"<section>\n<h2>Judge-free measures</h2>\n<table><tr><th>measure</th><th>value</th><th>definition</th>"
            f"</tr>{body}</table>\n</section>")


INSTRUCT = {  # key: what the share is of (TinyStories-Instruct evaluations)
    "all_words": "stories that use all of their header's Words (or simple inflections of them)",
    "words": "requested words used, over all requested words",
    "random_sentence": "stories that contain their Random sentence",
    "dialogue_when_asked": "stories with quoted speech when Features asks for Dialogue",
    "no_dialogue_otherwise": "stories without quoted speech when it does not",
}


def instruct_section(summary: dict) -> str:
    rates = summary.get("instruct")
    if not rates:
        return ""
    body = "".join(f'<tr><td>{key}</td><td class="num">{fmt(rates.get(key), "3")}</td><td class="small">{e(text)}'
                   "</td></tr>" for key, text in INSTRUCT.items())
    return (f"\n<section>\n<h2>Instruction following</h2>\n<p class=\"muted small\">{rates['stories']} stories, "
            f"{rates['stories_with_words']} of them asked for words.</p>\n<table><tr><th>measure</th><th>share</th>"
            f"<th>of</th></tr>{body}</table>\n</section>")


def histogram_svg(grade: str, counts: list[int]) -> str:
    top, left, base = max(counts) or 1, LEFT, PLOT_H + 20
    parts = [f'<svg class="histogram" data-grade="{grade}" width="{SVG_W}" height="{SVG_H}" '
             f'viewBox="0 0 {SVG_W} {SVG_H}" role="img" aria-label="{grade} histogram">',
             f'<line x1="0" y1="{base}" x2="{SVG_W}" y2="{base}" stroke="#d0d7de"/>']
    for i, n in enumerate(counts):
        x, h = left + i * (BAR_W + BAR_GAP), PLOT_H * n / top
        parts.append(f'<rect class="bar" data-bin="{i}" data-count="{n}" x="{x}" y="{base - h:.1f}" '
                     f'width="{BAR_W}" height="{h:.1f}"><title>{grade} {i}: {n}</title></rect>')
        if n:
            parts.append(f'<text x="{x + BAR_W / 2}" y="{base - h - 3:.1f}" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{x + BAR_W / 2}" y="{base + 14}" text-anchor="middle">{i}</text>')
    return "".join(parts) + "</svg>"


def histograms(rows: list[dict]) -> str:
    figs = "".join(f'<figure class="hist"><h3>{g}</h3>{histogram_svg(g, grade_counts(rows, g))}</figure>'
                   for g in GRADES)
    return (f'<section>\n<h2>Grade histograms</h2>\n<p class="muted small">Completions per grade, 0 to 10 '
            f"(non-integer grades rounded); ungraded completions are not counted.</p>\n"
            f'<div class="hists">{figs}</div>\n</section>')


def prompts(rows: list[dict]) -> str:
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["prompt_id"], []).append(row)
    body = "\n".join(prompt_block(pid, sorted(group, key=lambda r: r["sample"]))
                     for pid, group in sorted(groups.items()))
    return f"<section>\n<h2>Completions ({len(rows)} for {len(groups)} beginnings)</h2>\n{body}\n</section>"


def prompt_block(pid: int, group: list[dict]) -> str:
    samples = "\n".join(completion_block(row) for row in group)
    return (f'<article class="prompt" id="prompt-{pid}">\n<h3>Beginning {pid}</h3>\n'
            f'<p class="text beginning">{e(group[0]["prompt"])}</p>\n{samples}\n</article>')


def completion_block(row: dict) -> str:
    grades = row.get("grades")
    if grades:
        chips = [f'<span class="chip grade">{g} {score(grades.get(g))}</span>' for g in GRADES]
        age = grades.get("age_group")
        chips.append(f'<span class="chip grade">age {e(age)} ({AGES.get(age, "?")})</span>' if age
                     else '<span class="chip none">no age group</span>')
    else:
        chips = ['<span class="chip none">ungraded</span>']
    chips += ['<span class="chip ok">finished</span>' if row["finished"] else
              '<span class="chip cut">cut at max_new_tokens</span>',
              f'<span class="chip">{row["words"]} words</span>',
              f'<span class="chip">repetition {fmt(row["repetition"], "3")}</span>',
              f'<span class="chip">copied {fmt(row.get("copied"), "3")}</span>']
    follows = row.get("follows") or {}
    chips += [f'<span class="chip {"ok" if follows[key] else "cut"}">{label} {"yes" if follows[key] else "no"}</span>'
              for key, label in (("all_words", "all words"), ("random_sentence", "sentence"),
                                 ("dialogue_when_asked", "dialogue"), ("no_dialogue_otherwise", "no dialogue"))
              if key in follows]
    return (f'<div class="sample"><div class="facts"><strong>sample {row["sample"]}</strong>{"".join(chips)}</div>\n'
            f'<p class="text">{e(row["completion"])}</p>\n{judge_details(row)}</div>')


def judge_details(row: dict) -> str:
    parts = [(title, row.get(key)) for title, key in (("Assessment", "judge_assessment"), ("Grades", "judge_reply"))]
    inner = "".join(f'<h4 class="small">{title}</h4><p class="text">{e(text)}</p>' for title, text in parts if text)
    return f"<details><summary>The judge's reply</summary>{inner}</details>" if inner else ""
