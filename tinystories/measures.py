"""Judge-free measures of generated stories: cheap numbers that still catch a degenerate or copying model.

    words("Tom ran. Tom ran.")                   # ['tom', 'ran', 'tom', 'ran']
    repetition(text, n=4)                         # share of the text's word 4-grams that repeat an earlier one
    distinct(texts, n=2)                          # distinct word bigrams / all word bigrams, over a prompt's samples
    index = NgramIndex(train_stories, k=8); index.copied(text)   # share of the text's 8-grams found in ONE story

Words are runs of letters, digits and apostrophes, lowercased, so punctuation and case do not make a repeat look new.
Definitions (also in docs/evaluation.md):
- `repetition`: 1 - (distinct word 4-grams / word 4-grams) inside one completion; 0 when it has fewer than 4 words.
  A story that loops ("and they played and they played ...") scores near 1; fresh text 0.
- `distinct_n` (Li et al., 2016): distinct word n-grams / all word n-grams, pooled over one prompt's samples; 1 when
  no n-gram occurs twice. Low values mean the samples say the same things.
- `copied` (the TinyStories paper's memorization check): the largest share of a completion's word 8-grams that occur
  in any single training story. 1 means the completion is a verbatim piece of one story; stock phrases of the data
  set ("once upon a time there was a") stay well under that.
"""

import re
from collections import Counter, defaultdict
from typing import Iterable, Optional

WORD = re.compile(r"[\w']+")
REPETITION_N = 4
COPY_K = 8


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str, n: int = REPETITION_N) -> float:
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct(texts: Iterable[str], n: int) -> Optional[float]:
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


class NgramIndex:
    """Which training stories hold each word k-gram (as a hash), to find a completion's closest story."""

    def __init__(self, stories: Iterable[str], k: int = COPY_K):
        self.k = k
        self.stories = 0
        self.where: dict[int, list[int]] = defaultdict(list)
        for i, story in enumerate(stories):
            self.stories += 1
            for gram in set(ngrams(words(story), k)):
                self.where[hash(gram)].append(i)

    def copied(self, text: str) -> Optional[float]:
        """Share of `text`'s k-grams found in the one training story that holds most of them; None if too short."""
        grams = ngrams(words(text), self.k)
        if not grams:
            return None
        hits = Counter(i for gram in grams for i in set(self.where.get(hash(gram), ())))
        return max(hits.values(), default=0) / len(grams)
