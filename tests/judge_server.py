"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for the judge tests.

    with JudgeServer() as server:          # serves http://127.0.0.1:<port>/v1 until the block ends
        ... Judge(server.url, "judge-model", ...) ...
        server.sent                        # completion text -> the grades the server wrote for it (None: no grades)

It answers the paper's two turns: an assessment, then grades in one of several formats picked from the completion's
text (the paper's line, markdown, JSON, loose spacing), or no grades at all for some. It also fails on purpose: the
first grading request for some completions gets a 500, a 429 with `Retry-After: 1`, or a reply slower than the
client's timeout, so the client must retry.
"""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "judge-model"
KEY = "test-key"
FORMATS = (
    "Grammar: {grammar:g}/10, Creativity: {creativity:g}/10, Consistency: {consistency:g}/10, Plot: {plot:g}/10, "
    "Age group: {age} (4-5)",
    "Here is my grading.\n\n**Grammar:** {grammar:g}/10\n**Creativity:** {creativity:g} / 10\n"
    "**Consistency with the beginning:** {consistency:g}/10\n**Plot makes sense:** {plot:g} out of 10\n"
    "**Age group:** {age}",
    '```json\n{{"grammar": {grammar:g}, "creativity": {creativity:g}, "consistency": {consistency:g}, '
    '"plot": {plot:g}, "age_group": "{age}"}}\n```',
    "grammar   -  {grammar:g}\nCREATIVITY:{creativity:g}/10\nconsistency : {consistency:g}/10\n"
    "plot coherence = {plot:g}/10\nage: {age}",
    "I am sorry, the completion is too short for me to grade it fairly.",
)


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def planned(completion: str) -> tuple[str, dict | None, str]:
    """What the server does with a completion: (reply text, grades sent or None, first-attempt failure)."""
    h = digest(completion)
    form = FORMATS[h % len(FORMATS)]
    grades = None
    if "{grammar" in form:
        grades = {"grammar": h % 7 + 3, "creativity": (h >> 8) % 9 + 1, "consistency": (h >> 16) % 10 + 1,
                  "plot": (h >> 24) % 4 + 5 + 0.5 * ((h >> 28) % 2), "age_group": "ABCDEF"[(h >> 32) % 6]}
        reply = form.format(**grades, age=grades["age_group"])
    else:
        reply = form
    failure = ("500", "429", "slow", None, None)[(h >> 40) % 5]
    return reply, grades, failure


class JudgeServer:
    def __init__(self, slow_seconds: float = 3.0, key: str | None = None):
        self.slow_seconds, self.key = slow_seconds, key
        self.requests: list[tuple[str, int]] = []  # (kind, status)
        self.sent: dict[str, dict | None] = {}
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, headers = server.answer(body, self.headers.get("Authorization", ""))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in {**headers, "Content-Type": "application/json",
                                        "Content-Length": str(len(data))}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow reply
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict, authorization: str) -> tuple[int, dict, dict]:
        messages = body["messages"]
        kind = {1: "assess", 3: "grade"}.get(len(messages), "other")
        if "Say OK." in messages[0]["content"]:
            kind = "check"
        if self.key is not None and authorization != f"Bearer {self.key}":
            return self.record(kind, 401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}})
        if body["model"] != MODEL:
            return self.record(kind, 404, {"error": {"message": f"model '{body['model']}' not found"}})
        if kind == "check":
            return self.record(kind, 200, chat("OK"))
        story = messages[0]["content"].split("student's completion:\n\n", 1)[1]
        completion = story.split("***", 1)[1].split("\n\nPlease provide your general", 1)[0]
        if kind == "assess":
            return self.record(kind, 200, chat("The student continues the story; the grammar is mostly fine."))
        reply, grades, failure = planned(completion)
        with self.lock:
            self.attempts[completion] = attempt = self.attempts.get(completion, 0) + 1
        if attempt == 1 and failure == "500":
            return self.record(kind, 500, {"error": {"message": "overloaded"}})
        if attempt == 1 and failure == "429":
            return self.record(kind, 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if attempt == 1 and failure == "slow":
            time.sleep(self.slow_seconds)  # past the client's timeout: it retries on another connection
        with self.lock:
            self.sent[completion] = grades
        return self.record(kind, 200, chat(reply))

    def record(self, kind: str, status: int, payload: dict, headers: dict | None = None):
        with self.lock:
            self.requests.append((kind, status))
        return status, payload, headers or {}

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat(content: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
