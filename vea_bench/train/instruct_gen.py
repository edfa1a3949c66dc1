"""Generate emotion instruction data from any OpenAI-compatible chat endpoint (EmoVIT-style, paper 3.2).

For each training image the endpoint sees the image (base64 data URL) and its annotated emotion
and is asked for two sections, "Key elements" and "Reasoning", which `instructions.py` turns into
the conversation and reasoning instructions. The standard library does the HTTP (urllib), so any
server that speaks ``POST /v1/chat/completions`` works: OpenAI, vLLM, llama.cpp, Ollama...

Robust by construction: a thread pool bounds concurrency; 429 / 5xx / timeouts / malformed
replies (bad JSON, missing sections) are retried with exponential backoff and jitter; each good
answer is appended to the JSONL output and flushed at once, so an interrupt loses nothing and a
rerun skips the images already answered. Images that still fail are reported, not written.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError, DatasetError, VeaError
from vea_bench.labels import LabelSpace
from vea_bench.progress import Progress, ensure
from vea_bench.train.instructions import parse_sections

if TYPE_CHECKING:
    from vea_bench.datasets.base import DatasetIndex, Sample

log = logging.getLogger(__name__)

GENERATOR_SYSTEM = "You are an expert in analysing the emotions that images convey."

_PROMPT = """Describe the key elements of this image and the reasoning by which a viewer would infer the emotion it conveys.

The emotion annotated for this image is one of these {n} categories: {labels}.

==Emotion==
{emotion}
==

Ground both sections in what is visible in the image: objects, people, expressions, colours, light, composition and setting. Do not name the annotated emotion category itself; describe what leads to it.

Answer in exactly this format, with these two headings:

1. Key elements
<a few sentences describing the key visual elements of the image>

2. Reasoning
<a few sentences explaining how these elements lead to the emotional inference>
"""


def generation_prompt(label: str, space: LabelSpace) -> str:
    """The user prompt for one image: its label, the label space and the two-section answer format."""
    return _PROMPT.format(n=space.num_classes, labels=", ".join(space.labels), emotion=label)


class TransientError(Exception):
    """A reply worth retrying (rate limit, server error, timeout, malformed content)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EndpointError(VeaError):
    """The endpoint refused the request in a way retries cannot fix (bad key, unknown model, bad URL)."""


def chat_completions_url(base_url: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/chat/completions``."""
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--base-url must start with http:// or https:// (got '{base_url}')")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1") or "/v1/" in url + "/":
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask: URL, model name, API key (None for local servers), request knobs."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    temperature: float | None = None
    max_tokens: int | None = 512
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return chat_completions_url(self.base_url)


def encode_image(path: Path, max_side: int = 1024) -> str:
    """A ``data:`` URL of the image; larger than ``max_side`` on the long side -> re-encoded JPEG.

    Raises `DatasetError` for unreadable images (they are reported, not retried).
    """
    from PIL import Image

    from vea_bench.datasets import open_image

    img = open_image(path)  # one-line DatasetError if broken
    data = Path(path).read_bytes()
    fmt = (Image.open(io.BytesIO(data)).format or "").upper()
    if max(img.size) > max_side or fmt not in ("JPEG", "PNG", "WEBP", "GIF"):
        scale = min(1.0, max_side / max(img.size))
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        data, fmt = buf.getvalue(), "JPEG"
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def request_body(endpoint: Endpoint, prompt: str, image_url: str) -> dict[str, Any]:
    """The chat-completions request: system message, then the prompt and the image as content parts."""
    body: dict[str, Any] = {
        "model": endpoint.model,
        "messages": [
            {"role": "system", "content": GENERATOR_SYSTEM},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            },
        ],
    }
    if endpoint.temperature is not None:
        body["temperature"] = endpoint.temperature
    if endpoint.max_tokens is not None:
        body["max_tokens"] = endpoint.max_tokens
    body.update(endpoint.extra_body)
    return body


def post_chat(endpoint: Endpoint, body: dict[str, Any]) -> str:
    """One request; returns the assistant's text. Transient problems raise `TransientError`."""
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    req = urllib.request.Request(endpoint.url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=endpoint.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if exc.code == 429 or exc.code >= 500 or exc.code == 408:
            ra = exc.headers.get("Retry-After") if exc.headers else None
            raise TransientError(f"HTTP {exc.code}{detail}", _parse_retry_after(ra)) from None
        hint = {401: "; check the API key (--api-key-env)", 403: "; check the API key's permissions",
                404: "; check --base-url and --model"}.get(exc.code, "")
        raise EndpointError(f"{endpoint.url}: HTTP {exc.code}{detail}{hint}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"connection problem ({reason})") from None
    try:
        payload = json.loads(raw)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise TransientError(f"malformed reply (not the chat-completions shape): {raw[:80]!r}") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise TransientError("empty reply content")
    return content


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(300).decode("utf-8", "replace")
        msg = json.loads(body).get("error", {})
        msg = msg.get("message") if isinstance(msg, dict) else msg
        return f" ({str(msg)[:120]})" if msg else ""
    except Exception:  # noqa: BLE001  the detail is a courtesy
        return ""


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@dataclass
class GenerateReport:
    """What a generation run did: written now, already present (resumed), and failures with reasons."""

    out: Path
    total: int
    written: int = 0
    skipped_existing: int = 0
    retries: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def done_images(out: Path) -> set[str]:
    """Images already answered in ``out``; a torn last line (killed mid-write) is cut off first."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        log.warning("%s: removing a torn last line left by an interrupted write", out)
        with open(out, "r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    done = set()
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.add(row["image"])
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{out}: line {n} is not a vea-bench instruction entry; fix or move the file") from None
    return done


@dataclass
class _Asker:
    """Asks the endpoint about one image, retrying transient failures with jittered backoff.

    Called from the pool's threads: the jitter draws share one seeded generator under a lock, and
    ``stop`` (set on an interrupt) ends every retry loop at its next attempt.
    """

    index: DatasetIndex
    endpoint: Endpoint
    max_side: int
    max_retries: int
    backoff: float
    backoff_max: float
    seed: int
    sleep: Callable[[float], None]
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._rng_lock = threading.Lock()

    def wait_s(self, k: int, retry_after: float | None) -> float:
        """Seconds before retry ``k``: ``backoff * 2**k`` plus jitter, a larger Retry-After winning, capped."""
        with self._rng_lock:
            j = self._rng.uniform(0, self.backoff)
        wait_s = min(self.backoff_max, self.backoff * (2 ** k) + j)
        return max(wait_s, min(retry_after or 0.0, self.backoff_max))

    def __call__(self, sample: Sample) -> tuple[Sample, dict[str, Any] | None, str | None, int]:
        """(sample, the JSONL row or None, why it failed or None, retries spent)."""
        space = self.index.label_space
        label = space.labels[sample.label]
        try:
            image_url = encode_image(self.index.abspath(sample), self.max_side)
        except DatasetError as exc:
            return sample, None, str(exc), 0
        body = request_body(self.endpoint, generation_prompt(label, space), image_url)
        last = ""
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                return sample, None, "interrupted", attempt
            retry_after = None
            try:
                content = post_chat(self.endpoint, body)
                key, reasoning = parse_sections(content)
                row = {"image": sample.path, "label": label, "response": content, "key_elements": key,
                       "reasoning": reasoning, "model": self.endpoint.model, "dataset": self.index.name}
                return sample, row, None, attempt
            except TransientError as exc:
                last, retry_after = str(exc), exc.retry_after
            except ValueError as exc:  # sections missing or empty
                last = f"bad answer: {exc}"
            if attempt < self.max_retries:
                log.info("%s: attempt %d failed (%s); retrying", sample.path, attempt + 1, last)
                self.sleep(self.wait_s(attempt, retry_after))
        return sample, None, f"gave up after {self.max_retries + 1} attempts: {last}", self.max_retries


def generate_instructions(
    index: DatasetIndex,
    out: str | Path,
    endpoint: Endpoint,
    *,
    split: str = "train",
    concurrency: int = 4,
    max_retries: int = 5,
    limit: int | None = None,
    max_side: int = 1024,
    backoff: float = 1.0,
    backoff_max: float = 60.0,
    seed: int = 0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> GenerateReport:
    """Ask the endpoint about every image of ``split`` not yet in ``out``; append answers as JSONL.

    ``max_retries`` counts retries after the first attempt; waits grow as ``backoff * 2**k`` plus
    uniform jitter (a server's Retry-After wins when larger), capped at ``backoff_max``.
    """
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    if max_retries < 0:
        raise ConfigError("--max-retries must be 0 or more")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = list(index.split(split))
    if limit is not None:
        samples = samples[:limit]
    done = done_images(out)
    todo = [s for s in samples if s.path not in done]
    report = GenerateReport(out=out, total=len(samples), skipped_existing=len(samples) - len(todo))
    ask = _Asker(index, endpoint, max_side, max_retries, backoff, backoff_max, seed, sleep)
    prog = ensure(progress)
    prog.start(f"instructions {index.name}/{split}", total=len(todo))
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="instruct")
    try:
        _append_answers(pool, ask, todo, out, concurrency, report, prog)
    except BaseException:
        ask.stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        prog.finish()
    pool.shutdown(wait=True)
    return report


def _append_answers(pool: ThreadPoolExecutor, ask: _Asker, todo: list[Sample], out: Path, concurrency: int,
                    report: GenerateReport, prog: Progress) -> None:
    """Run ``ask`` over ``todo`` in ``pool``, appending (and syncing) each answer to ``out`` as it lands."""
    with open(out, "a", encoding="utf-8") as f:
        pending: set[Future[Any]] = set()
        it = iter(todo)
        # Keep at most 2 x concurrency requests queued: an interrupt cancels little work.
        for s in it:
            pending.add(pool.submit(ask, s))
            if len(pending) >= 2 * concurrency:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                sample, row, err, retries = fut.result()
                report.retries += retries
                if row is not None:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    report.written += 1
                else:
                    report.failed.append((sample.path, err or "unknown"))
                    log.warning("%s: %s", sample.path, err)
                prog.advance(1, written=report.written, failed=len(report.failed))
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(ask, nxt))
