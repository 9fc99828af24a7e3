"""The instruct variant of the synthetic generator: facts true of each story, and the plain generator untouched."""

import hashlib
import random
import re
from collections import Counter

import pytest

from tinystories import synthetic, synthetic_instruct
from tinystories.synthetic import (BOY_NAMES, GIRL_NAMES, PLOT_NAMES, SYNTHETIC_VERSION, generate_instruct_stories,
                                   generate_stories, instruct_story, synthetic_story, tagged_story)
from tinystories.synthetic_instruct import FEATURES, draft_story

N = 2000
ALLOWED = {"Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict"}

# Sentences of the happy resolution (every non-bad story of the plot has one) and of the sad ending.
HAPPY = {"lost": r"Thank you so much!", "share": r"\"I am sorry, ", "scared": r"asleep",
         "learn": r"This time, it worked!", "hurt_animal": r"could (fly|walk|hop|climb|run|jump) again",
         "surprise": r"best present ever|loved the", "new_friend": r"Yes, please!|I would love to!"}
SAD = {"lost": r"never saw it again", "share": r"all alone\.", "scared": r"did not sleep at all",
       "learn": r"gave up, and", "hurt_animal": r"the box was empty", "surprise": r"had no present",
       "new_friend": r"never even found out"}
# Phrases that only the feature's templates write: a feature is reported exactly when the story has it.
MARKERS = {
    "MoralValue": r"\blearned\b|moral of the story",
    "Twist": r"all along|just like \w+'s!|from next door, and|family cat|owl on the window sill|Little stars|"
             r"lost kitten|lost pet|wrong day|moved in next door",
    "Conflict": r"angrily|argued|tried to take it|grabbed the",
    "Foreshadowing": r"Hold on to your|dark clouds far away|coat on the chair in the corner\. In|trees swayed|"
                     r"blinked on and off|branch swaying|open window|edge of the table|cup of juice|very full|"
                     r"new friend today",
}


@pytest.fixture(scope="module")
def drafts():
    rng = random.Random(0)
    return [draft_story(rng) for _ in range(N)]


def test_plain_generator_unchanged():
    # Hashes of the output before the instruct variant was added; caches and other tests rely on it.
    assert SYNTHETIC_VERSION == 1
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    assert digest("\n\n".join(generate_stories(50, 0))) == \
        "e4635f8e5f2b91597cfeaa236addd03c3f717d0bccb789364d82abb31a970a56"
    assert digest("\n\n".join(generate_stories(200, 7))) == \
        "9d4ca33ff7b11c86d9f97a227a48a6d0928797a74799236003f697e7298a60d3"
    rng = random.Random(3)
    assert digest(repr([tagged_story(rng) for _ in range(100)])) == \
        "3f7b52e73c1b8f5c50bfa57dda7cd969e9ced2e838947757f894c08a7697a0cd"
    rng = random.Random(5)
    assert digest("\n\n".join(synthetic_story(rng) for _ in range(100))) == \
        "84d4a932b2777154b911867d0554b6b2889b6ea14f12233a5d2f6c4d19cd34be"


def test_deterministic_and_shape():
    pairs = list(generate_instruct_stories(200, seed=0))
    assert pairs == list(generate_instruct_stories(200, seed=0))
    assert pairs != list(generate_instruct_stories(200, seed=1))
    assert list(generate_instruct_stories(10, seed=0)) == pairs[:10]
    assert pairs == list(synthetic_instruct.generate_instruct_stories(200, seed=0))
    rng, again = random.Random(0), random.Random(0)
    assert [instruct_story(rng) for _ in range(20)] == [
        (d.text, {"features": d.features, "summary": d.summary}) for d in (draft_story(again) for _ in range(20))]
    for text, facts in pairs:
        assert isinstance(text, str) and set(facts) == {"features", "summary"}
        assert isinstance(facts["features"], list) and isinstance(facts["summary"], str)
    assert list(generate_instruct_stories(0)) == []
    with pytest.raises(ValueError):
        generate_instruct_stories(-1)


def test_feature_rates(drafts):
    counts = Counter(f for d in drafts for f in d.features)
    rates = {f: counts[f] / N for f in FEATURES}
    assert 0.28 <= rates["BadEnding"] <= 0.45, rates
    assert 0.35 <= rates["MoralValue"] <= 0.55, rates
    assert 0.15 <= rates["Twist"] <= 0.4, rates
    assert 0.1 <= rates["Foreshadowing"] <= 0.35, rates
    assert 0.25 <= rates["Conflict"] <= 0.5, rates
    assert not any({"BadEnding", "Twist"} <= set(d.features) for d in drafts)
    plots = {plot: [d for d in drafts if d.plot == plot] for plot in PLOT_NAMES}
    for plot, stories in plots.items():
        assert 0.2 < sum("BadEnding" in d.features for d in stories) / len(stories) < 0.5, plot
    assert all("Conflict" in d.features for d in plots["share"])
    assert not any("Twist" in d.features for d in plots["learn"])
    assert len({tuple(d.features) for d in drafts}) >= 15
    assert len({d.summary for d in drafts}) >= 0.9 * N


def test_facts_are_true(drafts):
    for d in drafts:
        text = d.text
        assert set(d.features) <= ALLOWED and "Dialogue" not in d.features
        assert d.features == [f for f in FEATURES if f in d.features]  # canonical order, no repeats
        assert set(d.evidence) == set(d.features)
        for feature, sentences in d.evidence.items():
            for sentence in sentences:
                assert sentence in text, (feature, sentence, text)
        bad = "BadEnding" in d.features
        assert bool(re.search(HAPPY[d.plot], text)) != bad, text
        assert bool(re.search(SAD[d.plot], text)) == bad, text
        for feature, marker in MARKERS.items():
            assert bool(re.search(marker, text)) == (feature in d.features), (feature, text)
        if "MoralValue" in d.features:  # the moral closes the story
            assert text.endswith(d.evidence["MoralValue"][0])
        elif bad:  # a sad closing sentence, after the sad resolution
            last = text.split("\n")[-1]
            assert re.search(r"bad|sad|worried|upset|unhappy|gloomy|frustrated|lonely|afraid|cried|never|alone", last)


def test_summary(drafts):
    for d in drafts:
        name = re.search(r"(?:girl|boy) named (\w+)", d.text).group(1)
        s = d.summary
        assert s.startswith(name + ",") or s.startswith(f"One night, {name},"), s
        assert s.isascii() and "{" not in s and "}" not in s and "  " not in s
        assert s.endswith(".") and len(re.findall(r"[.!?](?= |$)", s)) in (1, 2), s
        assert not re.search(r"[.!?] [a-z]", s), s
        assert not re.search(r"\b[Aa] [aeiouAEIOU]|\b[Aa]n [^aeiouAEIOU]", s), s
        wrong = {"girl": r"\b(he|him|his|himself)\b", "boy": r"\b(she|her|hers|herself)\b"}[d.gender]
        assert not re.search(wrong, s, re.IGNORECASE), s
        for word in re.findall(r"\b[A-Z][a-z]+\b", s):  # every name in the summary is in the story
            if word in GIRL_NAMES + BOY_NAMES:
                assert word in d.text, s


def test_stories_keep_the_style(drafts):
    wrong = {"girl": r"\b(he|him|his|himself)\b", "boy": r"\b(she|her|hers|herself)\b"}
    words = []
    for d in drafts:
        text = d.text
        assert text.isascii() and "{" not in text and "}" not in text and "<|endoftext|>" not in text
        kind, name = re.search(r"(girl|boy) named (\w+)", text).groups()
        assert kind == d.gender and name in (GIRL_NAMES if kind == "girl" else BOY_NAMES)
        assert not re.search(wrong[d.gender], text, re.IGNORECASE), text
        assert not re.search(r"[.!?] [a-z]", text), text
        assert not re.search(r"\b[Aa] [aeiouAEIOU]|\b[Aa]n [^aeiouAEIOU]", text), text
        paragraphs = text.split("\n")
        assert 2 <= len(paragraphs) <= 5
        for p in paragraphs:
            assert p and p == p.strip() and "  " not in p
            assert p[0].isupper() or p[0] == '"'
            assert p[-1] in '.!?"' and p.count('"') % 2 == 0
        words.append(len(text.split()))
    assert min(words) >= 60 and max(words) <= 260
    assert len({d.text for d in drafts}) >= 0.95 * N


def test_reexported_from_synthetic():
    assert synthetic.instruct_story.__doc__ == synthetic_instruct.instruct_story.__doc__
    rng, again = random.Random(4), random.Random(4)
    assert synthetic.instruct_story(rng) == synthetic_instruct.instruct_story(again)
