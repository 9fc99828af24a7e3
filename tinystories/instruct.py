"""TinyStories-Instruct records: a header of instructions, then the story it asks for.

    header, order, story = parse(record)          # Features / Words / Summary / Random sentence, any subset and order
    prompt = header_text(header, order)           # "Words: quit, oak, gloomy\nStory: \n\n": what generation continues
    record = derive(story, seed=0)                # a record made from a plain story, its header true of the story
    follows(header, story)                        # which instructions a story follows (uses all words, ...)

The format, as in the paper's release files: one line per header item, `Story: ` (with its trailing space), a blank
line, the story; records are separated by `<|endoftext|>` lines like plain stories, so they load through the same
sources. A header made from a plain story says only what is true of it: `Words` are three of its content words
(never stop words; the paper's are a noun, a verb and an adjective, which this cannot tell apart without a
part-of-speech tagger), `Random sentence` is one of its sentences, `Features: Dialogue` appears only where it has
quoted speech; synthetic stories add what their generator knows (`BadEnding`, `MoralValue`, `Twist`, `Conflict`, a
`Summary`). Which lines appear, and their order, is drawn per story from a seed and the story's text, so the same
story always gets the same header.

A requested word counts as used when the story has it or a simple inflection of it: +s, +es, +ed, +d, +ing, a final
e dropped before -ed/-ing, a final consonant doubled before -ed/-ing, a final y as -ies/-ied.
"""

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Optional

from tinystories.errors import UserError

NAMES = {"features": "Features", "words": "Words", "summary": "Summary", "random_sentence": "Random sentence"}
KEYS = {name.lower(): key for key, name in NAMES.items()}
FEATURES = ("Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")
STORY_LINE = re.compile(r"^Story:[ \t]*$", re.MULTILINE)
HEADER_LINE = re.compile(r"^(Features|Words|Summary|Random sentence):[ \t]?(.*?)[ \t]*$")
# How often each line appears in a derived header (Words nearly always: the paper's headers lean on them).
SHOW = {"words": 0.9, "features": 0.6, "summary": 0.6, "random_sentence": 0.5}
STOP_WORDS = frozenset("""
a about above after again against all almost also always am an and any are around as at away back be because been
before being below between both but by came can can't come could couldn't did didn't do does doesn't doing don't done
down during each even ever every few for from further get got had hadn't has hasn't have haven't having he he'd he'll
he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself
just let let's like made make many may me more most much must my myself never no nor not now of off on once one only or
other our ours ourselves out over own said same say says see she she'd she'll she's should shouldn't so some still
such than that that's the their theirs them themselves then there there's these they they'd they'll they're they've
this those through to too two under until up upon us very was wasn't we we'd we'll we're we've went were weren't what
what's when when's where where's which while who who's whom why why's will with won't would wouldn't yes yet you you'd
you'll you're you've your yours yourself yourselves
""".split())
WORD = re.compile(r"[A-Za-z']+")
SENTENCE = re.compile(r"[^.!?\n]*[.!?]+[\"”’']?")
QUOTES = re.compile(r"[\"“”]")


class RecordError(ValueError):
    """A header line that cannot be parsed; the caller names the file and record."""


def parse(record: str) -> tuple[dict, list[str], str]:
    """(header, order of its lines, story) of one record; CRLF, extra blank lines and any order are accepted."""
    text = record.replace("\r\n", "\n").replace("\r", "\n")
    match = STORY_LINE.search(text)
    if match is None:
        raise RecordError("no `Story:` line")
    header, order = {}, []
    for number, line in enumerate(text[:match.start()].split("\n"), 1):
        if not line.strip():
            continue
        found = HEADER_LINE.match(line.strip())
        if found is None:
            raise RecordError(f"header line {number} {line.strip()[:60]!r} is not Features, Words, Summary or "
                              "Random sentence")
        key = KEYS[found[1].lower()]
        value = found[2].strip()
        header[key] = [v.strip() for v in value.split(",") if v.strip()] if key in ("features", "words") else value
        order.append(key)
    return header, order, text[match.end():].strip("\n").rstrip()


def header_text(header: dict, order: Optional[list[str]] = None) -> str:
    """The header as the model was trained on it, ending with `Story: ` and a blank line."""
    lines = []
    for key in order or [k for k in NAMES if header.get(k)]:
        value = header[key]
        lines.append(f"{NAMES[key]}: {', '.join(value) if isinstance(value, list) else value}")
    return "\n".join(lines + ["Story: ", "", ""])


def sentences(story: str) -> list[str]:
    return [s.strip() for s in SENTENCE.findall(story) if len(WORD.findall(s)) >= 4]


def has_dialogue(story: str) -> bool:
    return len(QUOTES.findall(story)) >= 2


def content_words(story: str) -> list[str]:
    """Words of at least 3 letters, in lower case as the story writes them (so no names), minus stop words."""
    seen = dict.fromkeys(w for w in WORD.findall(story) if w.islower() and len(w) >= 3 and w not in STOP_WORDS
                         and "'" not in w)
    return list(seen)


def story_rng(story: str, seed: int) -> random.Random:
    return random.Random(hashlib.sha256(f"{seed}\0{story}".encode()).digest())


def derive(story: str, seed: int = 0, facts: Optional[dict] = None) -> tuple[dict, list[str]]:
    """A header true of `story` and the order of its lines; `facts` adds a generator's features and summary."""
    rng, facts = story_rng(story, seed), facts or {}
    candidates = {}
    words = content_words(story)
    if len(words) >= 3:
        candidates["words"] = rng.sample(words, 3)
    features = (["Dialogue"] if has_dialogue(story) else []) + [f for f in facts.get("features", []) if f in FEATURES]
    if features:
        candidates["features"] = features
    if facts.get("summary"):
        candidates["summary"] = facts["summary"]
    if lines := sentences(story):
        candidates["random_sentence"] = rng.choice(lines)
    chosen = [k for k in candidates if rng.random() < SHOW[k]] or list(candidates)[:1]
    rng.shuffle(chosen)
    return {k: candidates[k] for k in chosen}, chosen


def inflections(word: str) -> set[str]:
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing"}
    if w.endswith("e"):
        forms |= {w[:-1] + "ed", w[:-1] + "ing"}
    if w.endswith("y") and len(w) > 2:
        forms |= {w[:-1] + "ies", w[:-1] + "ied"}
    if len(w) >= 3 and w[-1] not in "aeiouwxy" and w[-2] in "aeiou" and w[-3] not in "aeiou":
        forms |= {w + w[-1] + "ed", w + w[-1] + "ing"}
    return forms


def uses_word(story: str, word: str) -> bool:
    return bool(inflections(word) & {w.lower() for w in WORD.findall(story)})


def first_uses(story: str, words: list[str]) -> list[int]:
    """Where in `story` (character offsets) each requested word is first used, by the rule of `uses_word`."""
    forms = {w: inflections(w) for w in words}
    starts = {}
    for match in WORD.finditer(story):
        found = match[0].lower()
        for word in forms:
            if word not in starts and found in forms[word]:
                starts[word] = match.start()
    return sorted(starts.values())


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def follows(header: dict, story: str) -> dict:
    """Which of the header's instructions `story` follows; a key is absent when the header does not ask it."""
    out = {}
    if header.get("words"):
        out["words"] = {w: uses_word(story, w) for w in header["words"]}
        out["all_words"] = all(out["words"].values())
    if header.get("random_sentence"):
        out["random_sentence"] = normalized(header["random_sentence"]) in normalized(story)
    dialogue = has_dialogue(story)
    if "Dialogue" in header.get("features", []):
        out["dialogue_when_asked"] = dialogue
    else:
        out["no_dialogue_otherwise"] = not dialogue
    return out


INSTRUCT_SEED = 0  # headers derived from plain stories: the same story always gets the same header


def parse_record(text: str, index: int, what: str) -> tuple[dict, list[str], str]:
    """`parse`, with a bad record named by its source and number (counted from 1)."""
    try:
        return parse(text)
    except RecordError as err:
        raise UserError(f"{what}: record {index + 1}: {err}; fix the record or drop it") from None


def record_columns(rows: dict, indices: list[int], mode: str, what: str, seed: int) -> dict:
    """A `datasets.map` batch of stories (or records) -> `header`, `text` (the story) and `words` (requested)."""
    headers, stories, words = [], [], []
    facts = rows.get("facts") or [None] * len(rows["text"])
    for index, text, fact in zip(indices, rows["text"], facts):
        if mode == "records":
            header, order, story = parse_record(text, index, what)
        else:
            story = text
            header, order = derive(text, seed, json.loads(fact) if fact else None)
        headers.append(header_text(header, order))
        stories.append(story)
        words.append(header.get("words", []))
    return {"header": headers, "text": stories, "words": words}


def instruct_split(texts, mode: str, what: str, seed: int = INSTRUCT_SEED):
    """The split's stories as instruct records: `header`, `text` and `words` columns."""
    import datasets

    features = datasets.Features({"header": datasets.Value("string"), "text": datasets.Value("string"),
                                  "words": datasets.Sequence(datasets.Value("string"))})
    return texts.map(record_columns, batched=True, with_indices=True, remove_columns=texts.column_names,
                     fn_kwargs={"mode": mode, "what": what, "seed": seed}, features=features, desc="instruct headers")


def records_file_headers(texts, what: str) -> list[tuple[dict, list[str]]]:
    """The (header, order) of every record of an instruct split, for evaluation prompts."""
    return [parse_record(text, index, what)[:2] for index, text in enumerate(texts)]


def evaluation_headers(source: str, split: str = "validation") -> list[tuple[dict, list[str]]]:
    """Headers to evaluate on: an instruct file's or data set's records, or headers derived from a plain story
    source's `split` exactly as `data.instruct: derive` makes them for training."""
    from tinystories.sources import file_split, load_split  # sources imports the synthetic generator

    path = Path(source)
    if path.is_file():
        texts = file_split(path)
        what = f"--prompts {path}"
    else:
        texts = load_split(source, split, instruct=True)
        what = f"--prompts {source} ({split})"
    if len(texts) == 0:
        raise UserError(f"{what}: no records")
    if STORY_LINE.search(texts[0]["text"].replace("\r\n", "\n")):
        return records_file_headers(texts["text"], what)
    facts = texts["facts"] if "facts" in texts.column_names else [None] * len(texts)
    return [derive(text, INSTRUCT_SEED, json.loads(fact) if fact else None) for text, fact in zip(texts["text"], facts)]


def follow_rates(rows: list[dict]) -> dict:
    """Shares between 0 and 1 over the stories whose header asks each thing (None where none asks it)."""
    def share(values: list[bool]):
        return sum(values) / len(values) if values else None

    follow = [row["follows"] for row in rows]
    asked_words = [w for f in follow for w in f.get("words", {}).values()]
    return {
        "all_words": share([f["all_words"] for f in follow if "all_words" in f]),
        "words": share(asked_words),
        "random_sentence": share([f["random_sentence"] for f in follow if "random_sentence" in f]),
        "dialogue_when_asked": share([f["dialogue_when_asked"] for f in follow if "dialogue_when_asked" in f]),
        "no_dialogue_otherwise": share([f["no_dialogue_otherwise"] for f in follow if "no_dialogue_otherwise" in f]),
        "stories": len(follow),
        "stories_with_words": sum("all_words" in f for f in follow),
    }
