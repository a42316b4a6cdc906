"""An OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``) for judge models.

Standard library only (``urllib`` + a thread pool). :meth:`ChatEndpoint.complete` sends many
requests with

- **a response cache on disk**: one JSON line ``{key, model, reply}`` per answered request, appended
  (flushed and fsynced) as each answer arrives; the key is the sha256 of model + messages + request
  settings. A request already in the cache is never sent again, so a killed or failed run loses
  nothing and its rerun sends only the rest. A torn last line (a kill mid-write) is dropped on open;
- **retries** with exponential backoff on timeouts, connection errors, 5xx and 429 (a
  ``Retry-After`` header is honoured, up to ``max_backoff`` seconds); other 4xx fail at once;
- **a rate limit** (requests per second, retries included) and **bounded concurrency**
  (``max_workers`` requests in flight).

When a request fails for good, the run stops and raises :class:`JudgeRunError` saying how many
answers were received and cached and how many remain. The base URL and key come from the arguments
or the environment: ``VLMINTERP_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``; e.g.
``https://api.openai.com/v1`` or a local vLLM ``http://127.0.0.1:8000/v1``) and
``VLMINTERP_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``; none sends no ``Authorization`` header).

Example:
    >>> ep = ChatEndpoint("gpt-4o", base_url="http://127.0.0.1:9/v1", cache=None)
    >>> ep.url, ep.request_key([{"role": "user", "content": "hi"}])[:12]
    ('http://127.0.0.1:9/v1/chat/completions', 'd99899b29078')
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = [
    "BASE_URL_ENV",
    "API_KEY_ENV",
    "ChatEndpoint",
    "ReplyCache",
    "EndpointError",
    "JudgeRunError",
    "base_url_from_env",
]

#: Environment variables read for the base URL, in order.
BASE_URL_ENV = ("VLMINTERP_JUDGE_BASE_URL", "OPENAI_BASE_URL")
#: Environment variables read for the API key, in order.
API_KEY_ENV = ("VLMINTERP_JUDGE_API_KEY", "OPENAI_API_KEY")
_RETRY_STATUS = {429, 500, 502, 503, 504}

Messages = list[dict[str, str]]


class EndpointError(RuntimeError):
    """A request failed for good (a 4xx other than 429, or retries exhausted)."""


class JudgeRunError(RuntimeError):
    """A judging run stopped early; the answers received so far are in the cache."""


def base_url_from_env() -> str | None:
    """The first of :data:`BASE_URL_ENV` that is set (None if none is).

    Example:
        >>> isinstance(base_url_from_env(), (str, type(None)))
        True
    """
    return next((os.environ[v] for v in BASE_URL_ENV if os.environ.get(v)), None)


class ReplyCache:
    """Answered requests in a JSONL file, keyed by request hash; appends are whole, flushed lines.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "cache.jsonl"
        >>> ReplyCache(path).add("k1", "m", "safe")
        >>> ReplyCache(path).get("k1"), len(ReplyCache(path))
        ('safe', 1)
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._replies: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a kill mid-append: drop the torn line
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(raw))
        for n, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._replies[entry["key"]] = entry["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f"{self.path}, line {n}: not a judge cache entry {{key, model, reply}}. Move the file "
                    "away (its answers are then asked again) or pass another cache path."
                ) from None

    def __len__(self) -> int:
        return len(self._replies)

    def __contains__(self, key: str) -> bool:
        return key in self._replies

    def get(self, key: str) -> str | None:
        """The cached reply of ``key`` (None if absent)."""
        return self._replies.get(key)

    def add(self, key: str, model: str, reply: str) -> None:
        """Record one reply (appended and fsynced before this returns)."""
        with self._lock:
            self._replies[key] = reply
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"key": key, "model": model, "reply": reply}, ensure_ascii=False) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())


class _RateLimiter:
    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        time.sleep(slot - now)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when is not None else None


@dataclass
class ChatEndpoint:
    """A judge model behind ``POST {base_url}/chat/completions``.

    Args:
        model: The model name sent in each request (and part of the cache key).
        base_url: Up to and including ``/v1`` (default: :data:`BASE_URL_ENV`).
        api_key: Bearer token (default: :data:`API_KEY_ENV`; none sends no header).
        cache: JSONL reply cache path (None: in memory only).
        timeout: Seconds per request.
        max_retries: Retries after the first attempt (timeouts, connection errors, 429, 5xx).
        backoff: First retry wait in seconds, doubled per retry.
        max_backoff: Longest wait, ``Retry-After`` included.
        requests_per_second: Rate limit over all workers and retries (None: unlimited).
        max_workers: Requests in flight at once.
        progress: Show a progress bar.

    Raises:
        ValueError: no base URL given or set in the environment, or bad settings.
    """

    model: str
    base_url: str | None = None
    api_key: str | None = None
    cache: str | Path | None = None
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    requests_per_second: float | None = None
    max_workers: int = 4
    progress: bool = True
    _cache: ReplyCache = field(init=False, repr=False)
    _limiter: _RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("ChatEndpoint: model must be a non-empty model name.")
        self.base_url = (self.base_url or base_url_from_env() or "").rstrip("/")
        if not self.base_url:
            raise ValueError(
                f"ChatEndpoint {self.model!r}: no base URL; pass base_url= or set {BASE_URL_ENV[0]} "
                f"(or {BASE_URL_ENV[1]}), e.g. https://api.openai.com/v1."
            )
        if self.api_key is None:
            self.api_key = next((os.environ[v] for v in API_KEY_ENV if os.environ.get(v)), None)
        if self.max_workers < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError(
                f"ChatEndpoint: need max_workers >= 1, max_retries >= 0 and timeout > 0; got "
                f"{self.max_workers}, {self.max_retries}, {self.timeout}."
            )
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError(
                f"ChatEndpoint: requests_per_second must be > 0, got {self.requests_per_second}."
            )
        self._cache = ReplyCache(self.cache)
        self._limiter = _RateLimiter(self.requests_per_second)

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return f"{self.base_url}/chat/completions"

    def request_key(self, messages: Messages, params: Mapping[str, Any] | None = None) -> str:
        """The cache key: sha256 of model, messages and request settings."""
        blob = json.dumps(
            {"model": self.model, "messages": messages, "params": dict(params or {})}, sort_keys=True
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def cached(self, messages: Messages, params: Mapping[str, Any] | None = None) -> str | None:
        """The cached reply to a request, or None."""
        return self._cache.get(self.request_key(messages, params))

    def _post(self, messages: Messages, params: Mapping[str, Any]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            wait_s = min(self.max_backoff, self.backoff * 2**attempt)
            self._limiter.wait()
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                try:
                    reply = json.loads(payload)["choices"][0]["message"]["content"]
                    if not isinstance(reply, str):
                        raise TypeError
                    return reply
                except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                    last = f"malformed response body {payload[:120]!r}"
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                if e.code not in _RETRY_STATUS:
                    raise EndpointError(f"{self.url} answered HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                after = _retry_after(e.headers)
                if after is not None:
                    wait_s = min(self.max_backoff, after)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.max_retries:
                time.sleep(wait_s)
        raise EndpointError(f"{self.url}: no answer after {self.max_retries + 1} attempts; last: {last}")

    def complete(
        self, requests: Sequence[Messages], params: Mapping[str, Any] | None = None, desc: str = "judge"
    ) -> list[str]:
        """The replies to ``requests`` (chat message lists), from the cache or the endpoint.

        Args:
            requests: One message list per request.
            params: Request settings sent with each (``temperature``, ``max_tokens``); part of the key.
            desc: Progress bar label.

        Raises:
            JudgeRunError: a request failed for good; every answer received before is cached.
        """
        params = dict(params or {})
        keys = [self.request_key(m, params) for m in requests]
        todo = {k: m for k, m in zip(keys, requests, strict=True) if k not in self._cache}
        if todo:
            self._send(todo, params, desc, cached=len(set(keys)) - len(todo))
        return [self._cache.get(k) for k in keys]

    def _send(self, todo: dict[str, Messages], params: dict[str, Any], desc: str, cached: int) -> None:
        stop = threading.Event()

        def one(key: str, messages: Messages) -> None:
            if stop.is_set():
                return
            self._cache.add(key, self.model, self._post(messages, params))

        bar = tqdm(total=len(todo), desc=desc, unit="req", disable=not self.progress)
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            pending = {pool.submit(one, k, m) for k, m in todo.items()}
            error: BaseException | None = None
            try:
                while pending and error is None:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        if f.exception() is not None:
                            error = error or f.exception()
                        else:
                            bar.update(1)
            finally:  # an error or Ctrl-C: start nothing new; requests in flight finish and are cached
                stop.set()
                for f in pending:
                    f.cancel()
        bar.close()
        if error is not None:
            answered = sum(k in self._cache for k in todo)
            where = f"cached in {self._cache.path}" if self._cache.path else "kept in memory (no cache file)"
            raise JudgeRunError(
                f"judging stopped: {answered} of {len(todo)} new requests answered and {where} "
                f"({cached} were cached before); {len(todo) - answered} not judged. Cause: {error}. "
                "Rerun to send only the rest."
            ) from error
