"""`instruct generate` against a real OpenAI-shaped HTTP server on loopback: retries, validation, resume."""
from __future__ import annotations

import base64
import io
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vea_bench.datasets import load_dataset
from vea_bench.datasets.synthetic import make_synthetic
from vea_bench.train.instruct_gen import (
    Endpoint,
    EndpointError,
    chat_completions_url,
    done_images,
    generate_instructions,
)
from vea_bench.train.instructions import load_instructions

GOOD = "1. Key elements\nBright shapes fill the frame under warm light.\n\n2. Reasoning\nThe warm light and open shapes lift the mood."


class ChatServer:
    """A chat-completions server whose reply per image follows a script (then good answers)."""

    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}     # image tag -> replies to give first: "500", "badjson", "nosections", "401"
        self.calls: dict[str, int] = defaultdict(int)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][1]["content"][0]["text"]
                url = body["messages"][1]["content"][1]["image_url"]["url"]
                tag = server.tag_of(url)
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    n = server.calls[tag]
                    server.calls[tag] += 1
                    plan = server.script.get(tag, [])
                    action = plan[n] if n < len(plan) else "good"
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                if action == "500":
                    return self._send(500, b'{"error": {"message": "overloaded"}}')
                if action == "401":
                    return self._send(401, b'{"error": {"message": "bad key"}}')
                if action == "badjson":
                    return self._send(200, b'{"choices": [ this is not json')
                content = GOOD if action == "good" else "I cannot describe this image."
                assert "==Emotion==" in prompt
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]}
                self._send(200, json.dumps(payload).encode())

            def _send(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.tags: dict[str, str] = {}

    def tag_of(self, data_url: str) -> str:
        """Which dataset image a data URL carries (decoded and matched by its pixels)."""
        head, b64 = data_url.split(",", 1)
        assert head.startswith("data:image/") and head.endswith(";base64")
        raw = base64.b64decode(b64)
        Image.open(io.BytesIO(raw)).load()
        return self.tags.get(raw[-64:].hex(), "unknown")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = ChatServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic("imagefolder", tmp_path_factory.mktemp("g") / "data", per_class=4, size=16, seed=0,
                          label_space="binary")
    return load_dataset("imagefolder", root)


def _register(server: ChatServer, index) -> list[str]:
    paths = [s.path for s in index.split("train")]
    for p in paths:
        server.tags[(index.root / p).read_bytes()[-64:].hex()] = p
    return paths


def _no_sleep(_: float) -> None:
    return None


def test_url_forms() -> None:
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"


def test_retries_validation_output_and_resume(server, dataset, tmp_path) -> None:
    paths = _register(server, dataset)
    a, b, c = paths[0], paths[1], paths[2]
    server.script = {a: ["500"], b: ["badjson", "nosections"], c: ["500", "500", "500", "500"]}
    out = tmp_path / "gen.jsonl"
    ep = Endpoint(base_url=server.url, model="vision-model", api_key="sk-test")
    rep = generate_instructions(dataset, out, ep, concurrency=3, max_retries=2, sleep=_no_sleep)
    # a: 500 then good; b: bad JSON, missing sections, then good; c: never good within 3 attempts.
    assert server.calls[a] == 2 and server.calls[b] == 3 and server.calls[c] == 3
    assert rep.written == len(paths) - 1 and [p for p, _ in rep.failed] == [c]
    assert "HTTP 500" in rep.failed[0][1]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == sorted(set(paths) - {c})
    row = rows[0]
    assert row["key_elements"].startswith("Bright shapes") and row["reasoning"].startswith("The warm light")
    assert row["label"] == dataset.label_space.labels[next(s.label for s in dataset.split("train") if s.path == row["image"])]
    # The request: model, system + user parts with the label in the prompt; the key as a bearer token.
    req = server.requests[0]
    assert req["model"] == "vision-model" and req["messages"][0]["role"] == "system"
    assert any(lab in req["messages"][1]["content"][0]["text"] for lab in ("positive", "negative"))
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    # The output is valid instruction data.
    insts = load_instructions(out, dataset.label_space, index=dataset)
    assert len(insts) == 3 * len(rows)

    # Resume: only the failed image is asked again; nothing already written is duplicated.
    before = dict(server.calls)
    server.script = {}
    rep2 = generate_instructions(dataset, out, ep, concurrency=2, max_retries=2, sleep=_no_sleep)
    assert rep2.skipped_existing == len(paths) - 1 and rep2.written == 1 and not rep2.failed
    assert {k: v - before.get(k, 0) for k, v in server.calls.items() if v != before.get(k, 0)} == {c: 1}
    assert len(out.read_text().splitlines()) == len(paths)


def test_torn_last_line_is_repaired_before_appending(server, dataset, tmp_path) -> None:
    paths = _register(server, dataset)
    out = tmp_path / "torn.jsonl"
    good = json.dumps({"image": paths[0], "label": "positive", "response": GOOD})
    out.write_text(good + "\n" + '{"image": "' + paths[1][:5])  # killed mid-write
    assert done_images(out) == {paths[0]}
    assert out.read_text() == good + "\n"
    rep = generate_instructions(dataset, out, Endpoint(server.url, "m"), concurrency=2, sleep=_no_sleep)
    assert rep.skipped_existing == 1 and rep.written == len(paths) - 1
    assert all(json.loads(x) for x in out.read_text().splitlines())


def test_auth_error_stops_with_one_line(server, dataset, tmp_path) -> None:
    paths = _register(server, dataset)
    server.script = {p: ["401"] for p in paths}
    with pytest.raises(EndpointError) as err:
        generate_instructions(dataset, tmp_path / "x.jsonl", Endpoint(server.url, "m"), concurrency=1, sleep=_no_sleep)
    assert "401" in str(err.value) and "--api-key-env" in str(err.value) and "\n" not in str(err.value)


def test_cli_generate_uses_key_from_env_and_limit(server, dataset, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    _register(server, dataset)
    monkeypatch.setenv("MY_KEY", "sk-env")
    out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(app, ["instruct", "generate", "imagefolder", "--root", str(dataset.root), "--base-url",
                                 server.url, "--model", "m", "--out", str(out), "--api-key-env", "MY_KEY",
                                 "--limit", "3", "--concurrency", "2"])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 3
    assert all(h["Authorization"] == "Bearer sk-env" for h in server.headers)
    r = CliRunner().invoke(app, ["instruct", "generate", "imagefolder", "--root", str(dataset.root), "--base-url",
                                 "ftp://nowhere", "--model", "m", "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output and "--base-url" in r.output
