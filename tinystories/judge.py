"""Grade story completions with an LLM judge, as the TinyStories paper did (Eldan & Li, 2023, section 3).

    judge = Judge(base_url="http://127.0.0.1:8000/v1", model="qwen2.5-7b-instruct", cache_dir=out_dir / "judge")
    judge.check()                                           # one line if unreachable, unauthorised or no such model
    replies = judge.grade_all([(beginning, completion), ...])   # concurrent; each reply kept in cache_dir
    parse_grades("Grammar: 8/10, Creativity: 7/10, Consistency: 9/10, Plot: 8/10, Age group: C (6-7)")

Any server that speaks OpenAI's chat-completions API works (OpenAI, vLLM, Ollama, llama.cpp's server), through the
official `openai` client: it retries 429 (honouring `Retry-After`), 5xx, timeouts and dropped connections with
exponential backoff. The conversation is the paper's two turns: the beginning and the completion joined by `***` with
a request for a general assessment, then the request for grades; one sentence asking for the paper's own
`Grammar: X/10, ...` line is added, so that small local judges answer in a form that can be read.
"""

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from tinystories.atomic import atomic_write
from tinystories.errors import UserError, one_line

ASSESS = (
    "In the following exercise, the student is given a beginning of a story. The student needs to complete it into a "
    "full story. The exercise tests the student's language abilities and creativity. The symbol *** marks the "
    "separator between the prescribed beginning and the student's completion:\n\n{beginning}***{completion}\n\n"
    "Please provide your general assessment about the part written by the student (the one after the *** symbol). "
    "Is it gramatically correct? Is it consistent with the beginning of the story? Pay special attention to whether "
    "the student manages to complete the sentence which is split in the middle by the separator ***."
)
GRADE = (
    "Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and "
    "whether the plot makes sense. Moreover, please provide your best guess of what the age of the student might be, "
    "as reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. "
    "E: 10-12. F: 13-16.\n\nEnd with one line in this form: Grammar: X/10, Creativity: X/10, Consistency: X/10, "
    "Plot: X/10, Age group: X"
)
# TinyStories-Instruct (the paper's section 4.2): the story is graded against the instructions it was given.
ASSESS_INSTRUCT = (
    "In the following exercise, the student is given instructions for a story: words it must use, features it must "
    "have, a summary of it or a sentence it must contain. The student needs to write the story. The instructions "
    "were:\n\n{beginning}\n\nThe student wrote:\n\n{completion}\n\nPlease provide your general assessment about "
    "the story written by the student. Is it gramatically correct? Is it consistent with the instructions?"
)
GRADE_INSTRUCT = (
    "Now, grade the student's story in terms of grammar, creativity and consistency with the instructions. "
    "Moreover, please provide your best guess of what the age of the student might be, as reflected from the story. "
    "Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.\n\nEnd with one "
    "line in this form: Grammar: X/10, Creativity: X/10, Consistency: X/10, Age group: X"
)
CATEGORIES = ("grammar", "creativity", "consistency", "plot")
INSTRUCT_CATEGORIES = ("grammar", "creativity", "consistency")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
# A category's name, then up to 40 characters without a digit (markdown, "makes sense", quotes), then the number.
NUMBER = r"[^\d\n]{0,40}?(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*10)?"
NAMES = {"grammar": r"grammar", "creativity": r"creativity", "consistency": r"consistency",
         "plot": r"plot(?:[ _-]*(?:coherence|sense|makes sense))?"}
AGE = re.compile(r"(?i:age[ _-]*(?:group)?)[\"'*:\s]*(?:(?i:is)\s*)?[:=-]?[\"'*\s]*\(?([A-F])\b")


def parse_grades(reply: str, categories: tuple[str, ...] = CATEGORIES) -> Optional[dict]:
    """The grades (0-10) and the age group from whatever the judge wrote; None without all of `categories`.

    Reads the paper's `Grammar: 8/10, ...` line, markdown (`**Grammar:** 8/10`), JSON (`{"grammar": 8}`), other
    spacing and case. The last mention of a category wins, so a reply that discusses grammar first and grades it
    at the end is read at the end.
    """
    grades = {name: None for name in CATEGORIES}
    for name in categories:
        pattern = NAMES[name]
        found = [float(m) for m in re.findall(rf"\b{pattern}\b{NUMBER}", reply, flags=re.IGNORECASE)]
        found = [value for value in found if 0 <= value <= 10]
        if not found:
            return None
        grades[name] = found[-1]
    ages = AGE.findall(reply)
    grades["age_group"] = ages[-1].upper() if ages else None
    return grades


def cache_key(model: str, templates: tuple[str, str], beginning: str, completion: str) -> str:
    return hashlib.sha256(json.dumps([model, *templates, beginning, completion]).encode()).hexdigest()[:32]


def write_json(path: Path, value) -> None:
    """Atomically: an interrupted run leaves whole files or none."""
    with atomic_write(path) as f:
        json.dump(value, f, ensure_ascii=False)


class Judge:
    def __init__(self, base_url: Optional[str], model: str, cache_dir: Path, concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 6, instruct: bool = False):
        from openai import OpenAI

        self.templates = (ASSESS_INSTRUCT, GRADE_INSTRUCT) if instruct else (ASSESS, GRADE)
        self.categories = INSTRUCT_CATEGORIES if instruct else CATEGORIES
        self.model, self.base_url, self.cache_dir, self.concurrency = model, base_url, Path(cache_dir), concurrency
        # Local servers take any key; OpenAI's answers 401 without one, which check() reports.
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none", timeout=timeout,
                             max_retries=max_retries)
        self.requests = 0

    def where(self) -> str:
        return f"--judge_model {self.model} at {self.client.base_url}"

    def chat(self, messages: list[dict], **options) -> str:
        self.requests += 1
        response = self.client.chat.completions.create(model=self.model, messages=messages, **options)
        return response.choices[0].message.content or ""

    def check(self) -> None:
        """One short request, before any work: an unreachable server, a bad key or a wrong model is one line."""
        import openai

        try:
            self.client.with_options(max_retries=1, timeout=30).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=2)
        except openai.AuthenticationError as err:
            raise UserError(f"{self.where()}: the judge refused the key (401: {one_line(err, 120)}); set "
                            "OPENAI_API_KEY") from None
        except openai.NotFoundError as err:
            raise UserError(f"{self.where()}: not found (404: {one_line(err, 120)}); check --judge_model and "
                            "--judge_base_url (it usually ends in /v1)") from None
        except openai.APIConnectionError as err:
            raise UserError(f"{self.where()}: the judge does not answer ({type(err).__name__}: "
                            f"{one_line(err.__cause__ or err, 120)}); start it or fix --judge_base_url") from None
        except openai.APIStatusError as err:
            raise UserError(f"{self.where()}: the judge answered {err.status_code} ({one_line(err, 120)})") from None

    def path(self, beginning: str, completion: str) -> Path:
        return self.cache_dir / f"{cache_key(self.model, self.templates, beginning, completion)}.json"

    def cached(self, beginning: str, completion: str) -> Optional[dict]:
        path = self.path(beginning, completion)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def grade(self, beginning: str, completion: str) -> dict:
        """The two turns, kept in the cache: {"assessment": ..., "reply": ...}."""
        if (kept := self.cached(beginning, completion)) is not None:
            return kept
        key = (beginning, completion)
        assess, grade = self.templates
        if assess is ASSESS_INSTRUCT:  # the instructions without the trailing `Story:` line
            beginning = beginning.rstrip().removesuffix("Story:").rstrip()
        messages = [{"role": "user", "content": assess.format(beginning=beginning, completion=completion)}]
        assessment = self.chat(messages)
        messages += [{"role": "assistant", "content": assessment}, {"role": "user", "content": grade}]
        result = {"model": self.model, "assessment": assessment, "reply": self.chat(messages)}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.path(*key), result)
        return result

    def grade_all(self, pairs: list[tuple[str, str]], progress: Optional[Callable[[int], None]] = None) -> list[dict]:
        """Grade every (beginning, completion), at most `concurrency` at a time, in order."""
        import openai

        def one(pair):
            try:
                return self.grade(*pair)
            except openai.APIError as err:  # retries spent: the rest stays cached, a rerun asks for what is missing
                raise UserError(f"{self.where()}: a request failed after retries ({type(err).__name__}: "
                                f"{one_line(err, 120)}); the replies so far are kept: run the same command again "
                                "to continue") from None

        out = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for result in pool.map(one, pairs):
                out.append(result)
                if progress:
                    progress(len(out))
        return out
