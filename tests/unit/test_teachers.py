"""Teachers: rule, causal LM (tiny model), OpenAI-compatible endpoint (a fake local server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfimprove.config.methods import MetaSkillConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.io import InputError
from selfimprove.methods.teachers import (
    LMTeacher,
    OpenAITeacher,
    RuleTeacher,
    make_teacher,
    resolve_model,
)

ITEMS = [
    {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = 6.", "gold": "5"},
    {"question": "Ann has 4 pens.", "answer": "The answer is 4.", "gold": "#### 4"},
]


def test_rule_teacher():
    teacher = RuleTeacher()
    teacher.check()
    fbs = teacher.feedback(ITEMS)
    assert [f.verdict for f in fbs] == [False, True]
    assert fbs[0].first_error["correct"] == "5"


# ---------------------------------------------------------------------------- fake server


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 whose replies a test scripts.

    ``replies``: chat reply per request, in order; a reply may be a string (the message
    content), an int (an HTTP error status), a (status, headers) pair (an error with headers,
    e.g. Retry-After), or bytes (a raw, possibly broken, body).
    """

    def __init__(self, models=("teacher-7b",), models_status=200, models_body=None):
        self.models = list(models)
        self.models_status = models_status
        self.models_body = models_body
        self.replies: list = []
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.headers: list = []  # email.message.Message per request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                server.headers.append(self.headers)  # case-insensitive lookups
                if self.path != "/v1/models":
                    return self._send(404, b'{"error": "not found"}')
                if server.models_body is not None:
                    return self._send(server.models_status, server.models_body)
                data = {"object": "list", "data": [{"id": m} for m in server.models]}
                return self._send(server.models_status, json.dumps(data).encode())

            def do_POST(self):
                server.headers.append(self.headers)  # case-insensitive lookups
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, b"{}")
                server.times.append(time.monotonic())
                reply = server.replies.pop(0) if server.replies else "no verdict"
                if isinstance(reply, tuple):
                    return self._send(reply[0], b'{"error": "slow down"}', reply[1])
                if isinstance(reply, int):
                    return self._send(reply, b'{"error": "boom"}')
                if isinstance(reply, bytes):
                    return self._send(200, reply)
                msg = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                return self._send(200, json.dumps(msg).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        # bounded: the server stops itself after 60 s even if a test forgets to
        self.timer = threading.Timer(60.0, self.httpd.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> FakeServer:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_teacher_feedback_and_no_feedback_counting():
    with FakeServer() as srv:
        srv.replies = [
            "Feedback: The step 3 + 2 = 6 is wrong: 3 + 2 is 5.\nVerdict: incorrect",
            "Looks fine to me!",  # no verdict line -> no feedback
            "Verdict: correct",  # a verdict without feedback text -> no feedback
            "The answer 4 is correct.\nVerdict: correct",
        ]
        teacher = OpenAITeacher(srv.url, "teacher-7b", max_new_tokens=32, timeout_s=5)
        teacher.check()
        fbs = teacher.feedback(ITEMS * 2)
    assert [None if f is None else f.verdict for f in fbs] == [False, None, None, True]
    assert fbs[0].text == "The step 3 + 2 = 6 is wrong: 3 + 2 is 5."
    assert fbs[3].text == "The answer 4 is correct."
    req = srv.requests[0]
    assert req["model"] == "teacher-7b" and req["max_tokens"] == 32 and req["temperature"] == 0
    system, user = req["messages"]
    assert system["role"] == "system" and "Verdict: correct" in system["content"]
    assert "Reference answer: 5\nA: 3 + 2 = 6.\nFeedback:" in user["content"]
    assert "Authorization" not in srv.headers[0] and "Authorization" not in srv.headers[-1]


def test_rate_limited_request_is_retried_after_the_servers_delay():
    """429 with Retry-After: the client waits that long, retries, and the reply counts."""
    with FakeServer() as srv:
        srv.replies = [(429, {"Retry-After": "1"}), "Off by one: 3 + 2 is 5.\nVerdict: incorrect"]
        fbs = OpenAITeacher(srv.url, "teacher-7b", timeout_s=5, max_retries=2).feedback(ITEMS[:1])
    assert fbs[0] is not None and fbs[0].text == "Off by one: 3 + 2 is 5."
    assert len(srv.requests) == 2 and srv.requests[0] == srv.requests[1]
    assert srv.times[1] - srv.times[0] >= 0.95  # Retry-After honored (not the 0.5 s backoff)


def test_endpoint_api_key_from_environment(monkeypatch):
    with FakeServer() as srv:
        teacher = OpenAITeacher(srv.url, "teacher-7b", api_key_env="SELFIMPROVE_TEST_KEY")
        monkeypatch.delenv("SELFIMPROVE_TEST_KEY", raising=False)
        with pytest.raises(InputError, match="SELFIMPROVE_TEST_KEY.*not set"):
            teacher.check()
        monkeypatch.setenv("SELFIMPROVE_TEST_KEY", "sk-test")
        teacher.check()
        assert srv.headers[-1]["Authorization"] == "Bearer sk-test"


def test_health_check_errors_say_how_to_fix():
    port = _free_port()  # nothing listens there
    teacher = OpenAITeacher(f"http://127.0.0.1:{port}", "m")
    with pytest.raises(InputError, match=r"cannot reach http://127.0.0.1:\d+/v1/models.*curl"):
        teacher.check(timeout=1.0)
    with FakeServer(models_status=503) as srv:
        with pytest.raises(InputError, match="HTTP 503"):
            OpenAITeacher(srv.url, "teacher-7b").check()
    with FakeServer(models_body=b"<html>hello</html>") as srv:
        with pytest.raises(InputError, match="did not return the JSON"):
            OpenAITeacher(srv.url, "teacher-7b").check()
    with FakeServer(models=("llama-3", "qwen")) as srv:
        with pytest.raises(InputError, match="not served.*llama-3, qwen"):
            OpenAITeacher(srv.url, "teacher-7b").check()
    with FakeServer() as srv:  # a base URL without /v1 works too
        OpenAITeacher(srv.url.removesuffix("/v1"), "teacher-7b").check()
        # a wrong path prefix gives a 404 at the health check
        with pytest.raises(InputError, match="HTTP 404"):
            OpenAITeacher(srv.url.removesuffix("/v1") + "/api", "teacher-7b").check()


def test_persistent_server_error_fails_the_stage_with_one_clear_error():
    """A request still failing after the retries stops the stage (never a smaller corpus):
    the error names the request, the server's status and the fix."""
    with FakeServer() as srv:
        srv.replies = ["Right.\nVerdict: correct"] + [500] * 10
        teacher = OpenAITeacher(srv.url, "teacher-7b", timeout_s=5, max_retries=2)
        with pytest.raises(InputError) as err:
            teacher.feedback(ITEMS * 3)
        assert len(srv.requests) == 1 + 3  # the first item, then the second tried 1 + 2 times
    msg = str(err.value)
    assert "request 2/6, question 'Ann has 4 pens.'" in msg
    assert "HTTP 500 Internal Server Error after 2 retries" in msg
    assert "meta_skill.max_retries" in msg and "\n" not in msg


def test_server_gone_mid_run_fails_the_stage():
    teacher = OpenAITeacher(f"http://127.0.0.1:{_free_port()}", "m", timeout_s=2, max_retries=1)
    with pytest.raises(InputError, match=r"request 1/2, .* failed after 1 retries: APIConnection"):
        teacher.feedback(ITEMS)


@pytest.mark.parametrize(
    "reply, message",
    [
        (400, r"HTTP 400 Bad Request .*context"),
        (401, r"HTTP 401 Unauthorized .*check the API key \(meta_skill.api_key_env=None\)"),
        (b"{not json", "not an OpenAI chat completion"),
        (b'{"choices": []}', "not an OpenAI chat completion"),
    ],
)
def test_rejected_or_broken_replies_fail_at_once(reply, message):
    with FakeServer() as srv:
        srv.replies = [reply]
        with pytest.raises(InputError, match=message):
            OpenAITeacher(srv.url, "teacher-7b", timeout_s=5, max_retries=3).feedback(ITEMS)
        assert len(srv.requests) == 1  # not retried


def test_make_teacher_checks_before_returning():
    assert isinstance(make_teacher(MetaSkillConfig()), RuleTeacher)
    cfg = MetaSkillConfig(teacher="openai", base_url=f"http://127.0.0.1:{_free_port()}", model="m")
    cfg.request_timeout_s = 1.0
    with pytest.raises(InputError, match="cannot reach"):
        make_teacher(cfg)
    with pytest.raises(InputError, match="no such folder"):
        make_teacher(MetaSkillConfig(teacher="lm", teacher_model="/does/not/exist"))


# ---------------------------------------------------------------------------- LM teacher


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("teacher") / "tiny")


def test_lm_teacher_on_a_tiny_model(tiny_model):
    teacher = make_teacher(
        MetaSkillConfig(teacher="lm", teacher_model=str(tiny_model)),
        n_shots=1,
        max_new_tokens=8,
        sampler_cfg=SamplerConfig(batch_size=4),
    )
    fbs = teacher.feedback(ITEMS)
    assert len(fbs) == 2  # a random model gives no parsable verdict: counted as no feedback
    assert all(f is None or isinstance(f.verdict, bool) for f in fbs)
    teacher.close()


def test_lm_teacher_parses_sampler_output():
    from selfimprove.sampling.base import Completion

    class Scripted:
        def __init__(self):
            self.prompts = []

        def sample(self, prefix, prompts, params, desc=""):
            self.prompts = prompts
            return [[Completion(" Good.\nVerdict: correct", 3, "stop")], [Completion("", 0, "eos")]]

    sampler = Scripted()
    fbs = LMTeacher("unused", n_shots=0, sampler=sampler).feedback(ITEMS)
    assert fbs[0].verdict is True and fbs[0].text == "Good." and fbs[1] is None
    assert (
        sampler.prompts[1]
        == "Q: Ann has 4 pens.\nReference answer: 4\nA: The answer is 4.\nFeedback:"
    )


def test_resolve_model_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no such folder"):
        resolve_model("./missing-model")


def test_max_retries_is_validated_and_passed_on():
    with pytest.raises(ValueError, match="max_retries"):
        MetaSkillConfig(max_retries=-1)
    with FakeServer() as srv:
        cfg = MetaSkillConfig(teacher="openai", base_url=srv.url, model="teacher-7b", max_retries=1)
        teacher = make_teacher(cfg)
    assert teacher.max_retries == 1 and teacher._get_client().max_retries == 1
