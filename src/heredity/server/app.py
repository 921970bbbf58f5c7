"""The lab server: ``create_app(store, settings)`` builds the FastAPI app that ``heredity serve`` runs on
Uvicorn.

Routes
  /v1/...                 OpenAI-compatible API (openai_api.py)
  /api/...                the lab's own JSON: conversations, feedback, export, next-token explorer, artifacts,
                          prompt templates, the heredity loop (/api/loop: rounds on a background thread, the
                          model alias, rollback) and the arena (/api/arena: two anonymous answers, a vote)
  /chat /explore /lineage /artifacts/ID /reports /prompts /loop      the pages (templates/, static/)

Every route but /login needs the API key when one is set (``HEREDITY_API_KEY``, at least 16 characters;
required to bind a non-loopback address): ``Authorization: Bearer KEY``, or the session cookie /login sets for
browsers — a random token the server keeps in memory (HttpOnly, SameSite=Strict, Secure over TLS), never the
key itself, so a restart (with a new key or not) revokes every browser session, and /logout revokes one. A
session expires after ``session_hours``; at most ``max_sessions`` live at once (a new login evicts the
oldest). A client address with ``max_auth_failures`` wrong keys (Bearer or /login) within a minute is answered
429 until a minute has passed.

Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) that carries an ``Origin`` must come
from this server's own origin (its host:port equals the ``Host`` header), and one whose ``Sec-Fetch-Site`` is
present must say ``same-origin`` or ``none``; otherwise 403. Clients that send no ``Origin`` (curl, the openai
client) pass. A body sent to any route but the /login and /logout forms must be JSON
(``Content-Type: application/json``; 415 otherwise), so a page cannot post a "simple" text/plain or form
request at the API.

Every response carries ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``; an artifact's files
are served as inert content (text, images, or an attachment to download) under a sandboxing
Content-Security-Policy. Error answers never show the store's location on disk (it reads ``$HEREDITY_HOME``).

Prompt templates are untrusted code (Jinja2 loops can burn CPU): parsing, rendering and comparing them run on
threads of their own (``PromptWorkers``), at most ``prompt_workers`` at once, each stopped after
``prompt_seconds`` (``HEREDITY_PROMPT_SECONDS``, default 5) and answered 400, so no template holds the event
loop or the other routes.

The ``Host`` header must name this server (DNS rebinding: a web page whose name resolves to 127.0.0.1 must not
read the keyless loopback server): on a loopback bind only localhost / 127.0.0.1 / [::1] pass, unless more
names are allowed (``--allowed-host``); on another bind, the bound address and the allowed names. A model's
queue holds at most ``max_queue`` waiting requests; beyond that the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import ipaddress
import json
import logging
import mimetypes
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from heredity import __version__
from heredity.errors import HeredityError
from heredity.server import errors
from heredity.server.errors import ApiError, error_response
from heredity.server.openai_api import host_for
from heredity.server.openai_api import router as openai_router
from heredity.server.runner import MAX_CLIENT_TOKENS, MAX_PENDING_TOKENS, ModelPool
from heredity.server.schemas import (
    ALIAS_PATTERN,
    MAX_BODY_BYTES,
    ArenaRequest,
    ArenaVote,
    EmptyBody,
    ExploreRequest,
    ExportRequest,
    Feedback,
    LoopRound,
    MoveAlias,
    NewConversation,
    NewPrompt,
    PromoteModel,
    RenderPromptRequest,
)
from heredity.store import Store
from heredity.store.conversations import CONV_RE, Conversations
from heredity.store.store import finite_json

HERE = Path(__file__).parent
ID_PATTERN = r"^[madrtp]-[0-9a-f]{16}$"
CONV_PATTERN = CONV_RE.pattern
COOKIE = "heredity_key"
ATTN_WINDOW = 96  # the explorer's heatmap shows the last this-many positions
MAX_ATTN_TOKENS = (
    2048  # attention over more positions is refused (eager attention holds a [heads, T, T] matrix)
)
MIN_KEY_CHARS = 16  # a shorter HEREDITY_API_KEY is refused at start
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
FORM_PATHS = ("/login", "/logout")  # the only routes that take a form body (everything else takes JSON)
FILE_CSP = "default-src 'none'; sandbox"  # an artifact's file, opened in the browser, can run nothing
PROMPT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,299}$"  # a reference in a path: no prompts:/... form
PROMPT_SECONDS = 5.0  # a prompt template's parse, render or diff running longer is stopped (400)


def _env_seconds(name: str, default: float) -> float:
    """``$name`` as a positive number of seconds (``default`` when unset); a one-line error otherwise."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 3600:
        raise HeredityError(f"{name}={raw[:40]!r} is not a number of seconds between 0 and 3600; fix it")
    return value


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default_factory=lambda: os.environ.get("HEREDITY_API_KEY") or None)
    max_loaded: int = 2  # models kept in memory at once
    batch_size: int = 16  # sequences one model decodes together
    preload: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(
        default_factory=list
    )  # Host names accepted besides this server's own ("*": any)
    max_queue: int = 64  # requests waiting per model before 429
    max_pending_tokens: int = MAX_PENDING_TOKENS  # tokens of work (prompt + n × max_tokens) pending per model
    max_client_tokens: int | None = (
        MAX_CLIENT_TOKENS  # of which one client address may hold this many (None: no bound)
    )
    session_hours: float = 12.0  # a browser session expires this long after its login
    max_sessions: int = 256  # browser sessions kept at once; a new login beyond that evicts the oldest
    max_auth_failures: int = 20  # wrong keys per client address per minute before 429
    prompt_workers: int = 2  # prompt templates parsed, rendered or compared at once (beyond that 429)
    prompt_seconds: float = field(  # each stopped after this long (400)
        default_factory=lambda: _env_seconds("HEREDITY_PROMPT_SECONDS", PROMPT_SECONDS)
    )

    def host_allowed(self, host_header: str) -> bool:
        """Whether a request's Host header (``name[:port]``) names this server."""
        name = host_header.strip().lower()
        if name.startswith("["):  # [::1]:8000
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        allowed = {h.lower().strip("[]") for h in self.allowed_hosts}
        if "*" in allowed or name in allowed:
            return True
        if is_loopback(self.host):
            return name in ("localhost", "127.0.0.1", "::1")
        return name == self.host.lower().strip("[]") or (self.host in ("0.0.0.0", "::") and not allowed)

    def check(self) -> None:
        """Raise a one-line HeredityError for settings the server must not start with: a non-loopback bind
        without an API key, or a key shorter than MIN_KEY_CHARS."""
        if not is_loopback(self.host) and not self.api_key:
            raise HeredityError(
                f"binding {self.host} exposes the server beyond this machine; set HEREDITY_API_KEY to a "
                "secret first (or bind 127.0.0.1)"
            )
        if self.api_key is not None and len(self.api_key) < MIN_KEY_CHARS:
            raise HeredityError(
                f"HEREDITY_API_KEY has {len(self.api_key)} characters; use a random one of at least "
                f"{MIN_KEY_CHARS} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Sessions:
    """Browser session tokens, in memory only (a restart revokes them all). A token is valid for ``max_age``
    seconds after its login; at most ``limit`` are kept, a new one beyond that evicting the oldest. Only each
    token's sha256 is kept, so neither memory nor a lookup's timing says anything about a valid token."""

    def __init__(self, max_age: float, limit: int, clock=time.monotonic):
        self.max_age, self.limit, self.clock = max_age, limit, clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()  # sha256(token) → expiry, oldest login first
        self._lock = threading.Lock()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()

    def _prune(self) -> None:
        now = self.clock()
        while self._expiry and next(iter(self._expiry.values())) <= now:  # expiries grow in login order
            self._expiry.popitem(last=False)

    def new(self) -> str:
        """A fresh random token, valid from now for ``max_age`` seconds."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            self._expiry[self._digest(token)] = self.clock() + self.max_age
            while len(self._expiry) > self.limit:
                self._expiry.popitem(last=False)
        return token

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was handed out here, has not expired, and was neither evicted nor discarded."""
        if not token:
            return False
        with self._lock:
            self._prune()
            return self._digest(token) in self._expiry

    def discard(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._expiry.pop(self._digest(token), None)

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._expiry)


class AuthFailures:
    """Wrong keys per client address over the last ``window`` seconds. ``retry_after(addr)`` is 0 while the
    address may try a key, else the seconds until its oldest counted failure is ``window`` old (it has
    ``limit`` of them). At most ``max_addresses`` addresses are tracked, the one that failed least recently
    forgotten first."""

    def __init__(self, limit: int, window: float = 60.0, max_addresses: int = 4096, clock=time.monotonic):
        self.limit, self.window, self.max_addresses, self.clock = limit, window, max_addresses, clock
        self._seen: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, addr: str) -> float:
        with self._lock:
            q = self._seen.get(addr)
            if q is None:
                return 0.0
            now = self.clock()
            while q and q[0] <= now - self.window:
                q.popleft()
            if not q:
                del self._seen[addr]
                return 0.0
            return q[0] + self.window - now if len(q) >= self.limit else 0.0

    def add(self, addr: str) -> None:
        with self._lock:
            q = self._seen.pop(addr, None) or deque(maxlen=self.limit)
            q.append(self.clock())
            self._seen[addr] = q
            while len(self._seen) > self.max_addresses:
                self._seen.popitem(last=False)


class PromptTimeout(BaseException):
    """Raised inside a prompt worker thread whose job ran past its time (a BaseException, so that no
    ``except Exception`` in the template's code or in Jinja2 swallows it)."""


def _raise_in_thread(ident: int, exc: type[BaseException] | None) -> None:
    """Make thread ``ident`` raise ``exc`` at its next Python instruction (None: withdraw one not yet
    raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), None if exc is None else ctypes.py_object(exc)
    )


class PromptWorkers:
    """Work on untrusted prompt templates (parsing, rendering, diffing) off the event loop, on a thread of its
    own per job: at most ``limit`` jobs at once (another is answered 429 at once) and each for at most
    ``seconds``. A job past its time is answered 400 and stopped: ``PromptTimeout`` is raised inside its
    thread, which ends at its next Python instruction (a Jinja2 loop is Python code; one long C call, such as
    a huge string join, finishes first). A slot is freed only when its thread has ended, so runaway jobs can
    never pile up."""

    def __init__(self, limit: int, seconds: float):
        self.limit, self.seconds = limit, seconds
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Jobs whose threads have not ended yet."""
        with self._lock:
            return self._running

    async def run(self, fn, *args, what: str = "the prompt template's work"):
        """``fn(*args)`` on a worker thread, awaited; its exception re-raised here. ``ApiError`` 429 when
        ``limit`` jobs are running, 400 (code ``prompt_timeout``) when it takes over ``seconds``."""
        with self._lock:
            if self._running >= self.limit:
                raise ApiError(
                    429,
                    f"{self._running} prompt templates are being worked on, the most this server runs at "
                    "once; retry in a moment",
                    "prompt_workers_busy",
                )
            self._running += 1
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        job_lock = threading.Lock()
        state = {"live": True, "stopped": False}

        def settle(result, error) -> None:
            if not done.done():
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(result)

        def job() -> None:
            # The interrupt is raised at most once, only while `live`; by the end of the inner `finally`
            # it has either been raised (and caught below) or withdrawn, so nothing after it is hit.
            result, error = None, None
            try:
                try:
                    result = fn(*args)
                finally:
                    with job_lock:
                        state["live"] = False
                        if state["stopped"]:
                            _raise_in_thread(threading.get_ident(), None)
            except BaseException as e:  # noqa: BLE001 - handed to the request that awaits it
                error = e
            with self._lock:
                self._running -= 1
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop has closed (the server stopped)
                pass

        thread = threading.Thread(target=job, name="prompt-work", daemon=True)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._running -= 1
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.seconds)
        except (TimeoutError, asyncio.CancelledError) as e:  # past its time, or the request was cancelled
            done.cancel()  # its outcome, whatever it is, is no one's now
            with job_lock:
                if state["live"] and not state["stopped"]:
                    state["stopped"] = True
                    _raise_in_thread(thread.ident, PromptTimeout)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise ApiError(
                400,
                f"{what} took over {self.seconds:g} s and was stopped; make the template do less work "
                "(fewer or smaller loops)",
                "prompt_timeout",
            ) from None


def client_address(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def too_many_failures(wait: float) -> str:
    return (
        f"too many wrong API keys from this address; wait {max(1, round(wait))} s, then send the right "
        "HEREDITY_API_KEY"
    )


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the server a ``Host`` header names: the same host and port, a
    missing port being the origin scheme's default. ``null``, schemes other than http(s) and anything
    unparsable are not."""
    try:
        o, h = urlsplit(origin.strip()), urlsplit("//" + host.strip())
        o_port, h_port = o.port, h.port
    except ValueError:
        return False
    if o.scheme not in ("http", "https") or not o.hostname or not h.hostname or o.path not in ("", "/"):
        return False
    default = 443 if o.scheme == "https" else 80
    return o.hostname == h.hostname and (o_port or default) == (h_port or default)


def cross_site(headers: dict) -> str | None:
    """Why a state-changing request looks sent by another site's page (None when it does not): an ``Origin``
    other than this server's, or a ``Sec-Fetch-Site`` other than same-origin / none. No ``Origin`` and no
    ``Sec-Fetch-Site`` (curl, the openai client, any non-browser client) is not cross-site."""
    host = headers.get("host", "")
    fix = "use this server's own pages, or a client that sends no Origin header (curl, the openai client)"
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, host):
        return f"a request from origin {origin[:200]!r} may not change anything on {host[:200]}; {fix}"
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"a {site[:40]} request (Sec-Fetch-Site) may not change anything on this server; {fix}"
    return None


def is_json(content_type: str) -> bool:
    """Whether a Content-Type is JSON (application/json or application/*+json, parameters allowed)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))


def hidden_paths(store: Store) -> list[tuple[bytes, bytes]]:
    """(bytes to find, replacement) pairs that take the store's location out of an error answer: the absolute
    home, resolved or not, raw and as JSON escapes it, longest first."""
    home = store.home
    paths = {str(home.absolute()), str(home.resolve())} | ({str(home)} if home.is_absolute() else set())
    out = set()
    for path in (x for x in paths if len(x) > 1):
        out.add((path.encode(), b"$HEREDITY_HOME"))
        out.add((json.dumps(path)[1:-1].encode(), b"$HEREDITY_HOME"))
    return sorted(out, key=lambda pair: -len(pair[0]))


class Guard:
    """ASGI middleware in front of every route: the Host check (421), the cross-site check on state-changing
    requests (403), the API key on every route but /login (401; 429 after too many wrong ones), JSON bodies
    only (415), a cap on body size (413 even for chunked bodies); on every answer nosniff and no framing, and
    no store path in an error."""

    def __init__(
        self,
        app,
        settings: Settings,
        sessions: Sessions,
        failures: AuthFailures,
        hide: list[tuple[bytes, bytes]] | None = None,
    ):
        self.app, self.settings, self.sessions, self.failures = app, settings, sessions, failures
        self.hide = hide or []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._secured(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.settings.host_allowed(headers.get("host", "")):
            resp = error_response(
                421,
                f"Host {headers.get('host', '')!r} is not this server's name; to allow it, start the "
                "server with --allowed-host NAME",
                "host_not_allowed",
            )
            return await resp(scope, receive, send)
        method = scope["method"]
        if method in STATE_CHANGING and (why := cross_site(headers)) is not None:
            return await error_response(403, why, "cross_site_request")(scope, receive, send)
        key = self.settings.api_key
        if key and scope["path"] != "/login":
            verdict = self._authorize(headers, key, client_address(scope))
            if isinstance(verdict, float):
                resp = error_response(429, too_many_failures(verdict), "too_many_auth_failures")
                resp.headers["Retry-After"] = str(max(1, round(verdict)))
                return await resp(scope, receive, send)
            if not verdict:
                if "text/html" in headers.get("accept", "") and method == "GET":
                    return await HTMLResponse(login_page(scope["path"]), status_code=401)(
                        scope, receive, send
                    )
                resp = error_response(
                    401,
                    "missing or wrong API key; send Authorization: Bearer $HEREDITY_API_KEY",
                    "invalid_api_key",
                )
                resp.headers["WWW-Authenticate"] = "Bearer"
                return await resp(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await self._too_large(scope, receive, send)
        body = None
        if method in ("POST", "PUT", "PATCH") and length is None:  # chunked: read it all, up to the cap
            body, more = b"", True
            while more:
                msg = await receive()
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > MAX_BODY_BYTES:
                    return await self._too_large(scope, receive, send)
        has_body = bool(body) if length is None else int(length) > 0
        ctype = headers.get("content-type", "")
        if (
            has_body
            and method in ("POST", "PUT", "PATCH")
            and scope["path"] not in FORM_PATHS
            and not is_json(ctype)
        ):
            resp = error_response(
                415,
                f"Content-Type {ctype[:100]!r} is not JSON; send the body as JSON with "
                "Content-Type: application/json",
                "unsupported_media_type",
            )
            return await resp(scope, receive, send)
        if body is not None:
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    def _authorize(self, headers: dict, key: str, addr: str) -> bool | float:
        """True for the right Bearer key or a live session cookie, False otherwise; the seconds to wait (a
        float) when the request tries a key from an address that sent too many wrong ones (a wrong key
        counts)."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            wait = self.failures.retry_after(addr)
            if wait > 0:
                return wait
            if secrets.compare_digest(auth[7:].strip().encode("utf-8", "surrogateescape"), key.encode()):
                return True
            self.failures.add(addr)
            return False
        return self.sessions.valid(session_token(headers))

    def _secured(self, send):
        """``send`` with the security headers added to every answer and the store's path taken out of error
        answers (held until their body is complete, then sent with its new length) and of streamed error
        events."""
        held: dict = {}

        async def wrapped(message):
            kind = message["type"]
            if kind == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": headers}
                if message["status"] >= 400 and self.hide:
                    held["start"], held["body"] = message, b""
                    return
            elif kind == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                body, start = self._scrub(held.pop("body")), held.pop("start")
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
            elif kind == "http.response.body" and message.get("body", b"").startswith(b'data: {"error"'):
                message = {**message, "body": self._scrub(message["body"])}
            return await send(message)

        return wrapped

    def _scrub(self, body: bytes) -> bytes:
        for needle, replacement in self.hide:
            body = body.replace(needle, replacement)
        return body

    @staticmethod
    async def _too_large(scope, receive, send):
        resp = error_response(
            413, f"request body over {MAX_BODY_BYTES} bytes; send less", "request_too_large"
        )
        return await resp(scope, receive, send)


def session_token(headers: dict) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def safe_next(target: str) -> str:
    """``target`` if it is a path on this server, else /chat: no scheme, no host, and nothing a browser reads
    as one (``//evil``, ``/\\evil`` — browsers turn backslashes into slashes — or control characters)."""
    t = target or ""
    if any(ord(c) < 0x20 or c == "\x7f" for c in t):
        return "/chat"
    norm = t.replace("\\", "/")
    parts = urlsplit(norm)
    if not norm.startswith("/") or norm.startswith("//") or parts.scheme or parts.netloc:
        return "/chat"
    return t


def _attr(s: str) -> str:
    from html import escape

    return escape(s, quote=True)


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>heredity · sign in</title>
<style>body{font-family:system-ui,sans-serif;display:grid;place-items:center;height:90vh;background:#f8fafc}
form{background:white;padding:2rem;border-radius:10px;box-shadow:0 1px 4px #0002}\
input{padding:.5rem;width:18rem}
button{padding:.5rem 1rem}</style></head><body><form method="post" action="/login">
<h2>heredity lab</h2><p>This server needs its API key (HEREDITY_API_KEY).</p>{error}
<input type="password" name="key" placeholder="API key" autofocus>\
<input type="hidden" name="next" value="{next}">
<button>Sign in</button></form></body></html>"""


def login_page(next_path: str, error: str = "") -> str:
    """The sign-in form, returning to ``next_path`` (escaped), with ``error`` (escaped) shown above the
    field."""
    shown = f'<p style="color:#b91c1c">{_attr(error)}</p>' if error else ""
    return LOGIN_PAGE.replace("{error}", shown).replace("{next}", _attr(next_path))


def create_app(store: Store | None = None, settings: Settings | None = None) -> FastAPI:
    store = store or Store()
    settings = settings or Settings()
    pool = ModelPool(
        store,
        max_loaded=settings.max_loaded,
        batch_size=settings.batch_size,
        max_queue=settings.max_queue,
        max_pending_tokens=settings.max_pending_tokens,
        max_client_tokens=settings.max_client_tokens,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for name in settings.preload:
            await asyncio.to_thread(pool.get, name)
        yield
        pool.close()

    app = FastAPI(
        title="heredity lab",
        version=__version__,
        lifespan=lifespan,
        description=(
            "OpenAI-compatible API over the heredity store, plus the lab's chat, explorer and lineage."
        ),
    )
    app.state.store, app.state.pool, app.state.settings = store, pool, settings
    # browser session tokens, in memory only: a restart revokes them all
    app.state.sessions = Sessions(settings.session_hours * 3600, settings.max_sessions)
    app.state.auth_failures = AuthFailures(settings.max_auth_failures)
    app.state.conversations = Conversations(store)
    app.state.prompt_workers = PromptWorkers(settings.prompt_workers, settings.prompt_seconds)
    app.state.loop_jobs = LoopJobs()  # heredity loop rounds, one at a time on a thread of their own
    app.state.arena = Arena()  # the arena's last battles, in memory
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    errors.install(app)
    app.add_middleware(
        Guard,
        settings=settings,
        sessions=app.state.sessions,
        failures=app.state.auth_failures,
        hide=hidden_paths(store),
    )
    app.include_router(openai_router)
    app.include_router(api_router())
    app.include_router(page_router())
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


# ---- the lab's JSON API ----------------------------------------------------------------------------------


def _conv(request: Request, cid: str):
    try:
        return request.app.state.conversations.get(cid)
    except KeyError:
        raise ApiError(404, f"no conversation {cid}", "conversation_not_found") from None


def _artifact(request: Request, aid: str):
    store: Store = request.app.state.store
    try:
        return store.get(aid)
    except HeredityError:
        raise ApiError(404, f"no artifact {aid} in this store", "artifact_not_found") from None


def artifact_detail(store: Store, aid: str) -> dict:
    art = store.get(aid)
    step = store.find_step(art.step_key)
    files = sorted(
        (
            {"path": p.relative_to(art.path).as_posix(), "bytes": p.stat().st_size}
            for p in art.path.rglob("*")
            if p.is_file()
        ),
        key=lambda f: f["path"],
    )
    parents = [] if step is None else [_brief(store, i) for i in step.inputs]
    return {
        "id": art.id,
        "kind": art.kind,
        "name": art.name,
        "meta": art.meta,
        "size_bytes": art.size_bytes,
        "created_at": art.created_at.isoformat(),
        "files": files,
        "parents": parents,
        "children": [{"id": c.id, "kind": c.kind, "name": c.name} for c in store.children(aid)],
        "step": None
        if step is None
        else {
            "op": step.op,
            "key": step.key,
            "config": step.config,
            "seed": step.seed,
            "metrics": step.metrics,
            "code_version": step.code_version,
            "lib_versions": step.lib_versions,
            "host": step.host,
            "started_at": step.started_at.isoformat(),
            "ended_at": step.ended_at.isoformat(),
            "seconds": round((step.ended_at - step.started_at).total_seconds(), 2),
        },
    }


def _brief(store: Store, aid: str) -> dict:
    try:
        a = store.get(aid)
        return {"id": a.id, "kind": a.kind, "name": a.name}
    except HeredityError:
        return {"id": aid, "kind": "missing", "name": "(not in this store)"}


def alias_mover(request: Request) -> str:
    """Who an alias move through the API is recorded as: ``lab`` on a server without an API key,
    ``api-key`` for a request with the Bearer key, ``session-`` + 8 hex of the sha256 of a signed-in
    browser's session token (never the token itself), the same for every move of one session."""
    if not request.app.state.settings.api_key:
        return "lab"
    headers = {k.lower(): v for k, v in request.headers.items()}
    if headers.get("authorization", "").lower().startswith("bearer "):  # Guard checked it: the key
        return "api-key"
    token = session_token(headers)
    if not token:
        return "lab"
    return "session-" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def prompt_list(store: Store) -> list[dict]:
    """``heredity.prompts.list_prompts`` with each latest version's ``format`` (text or messages) and
    ``variables`` (their names)."""
    from heredity.prompts import list_prompts

    rows = list_prompts(store)
    for row in rows:
        meta = store.get(row["latest"], verify_files=False).meta
        row.update(format=meta.get("format"), variables=meta.get("variables", []))
    return rows


def prompt_detail(store: Store, name: str) -> dict:
    """Template ``name``: its ``versions`` (oldest first: id, version, created_at, aliases pointing there,
    format, variable names, description), ``aliases`` ({alias: {id, version}}), the latest version's id and
    description, and ``history``, every alias move oldest first. A one-line HeredityError when there is no
    such template."""
    from heredity.prompts import alias_history, versions

    vs = versions(store, name)
    number = {v.id: v.version for v in vs}
    return {
        "name": name,
        "latest": vs[-1].id,
        "description": vs[-1].meta.get("description", ""),
        "versions": [
            {
                "id": v.id,
                "version": v.version,
                "created_at": v.created_at.isoformat(),
                "aliases": sorted(v.aliases),
                "format": v.meta.get("format"),
                "variables": v.meta.get("variables", []),
                "description": v.meta.get("description", ""),
            }
            for v in vs
        ],
        "aliases": {a: {"id": i, "version": number.get(i)} for a, i in store.prompt_aliases(name).items()},
        "history": alias_history(store, name),
    }


def _prompt_detail_or_404(store: Store, name: str) -> dict:
    try:
        return prompt_detail(store, name)
    except HeredityError as e:
        raise ApiError(404, str(e), "prompt_not_found") from None


async def _prompt_id(request: Request, ref: str, param: str = "ref") -> str:
    """The ``p-`` id ``ref`` names (read on a thread); 404 naming what exists otherwise."""
    from heredity.prompts import resolve_prompt

    try:
        return await asyncio.to_thread(resolve_prompt, request.app.state.store, ref)
    except HeredityError as e:
        raise ApiError(404, str(e), "prompt_not_found", param=param) from None


# ---- the heredity loop and the arena: state the routes share --------------------------------------------

JOB_PATTERN = r"^j-[0-9a-f]{16}$"
BATTLE_PATTERN = r"^b-[0-9a-f]{16}$"
LOG = logging.getLogger(__name__)


def _first_error(e: Exception) -> str:
    """One line for an exception: a pydantic error's first message, else the first line of its text."""
    errs = getattr(e, "errors", None)
    if callable(errs):
        try:
            return str(errs()[0]["msg"]).removeprefix("Value error, ")
        except (IndexError, KeyError, TypeError):
            pass
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _round_view(record: dict) -> dict:
    """A round record as the API shows it: without the (long) list of the feedback it trained on."""
    return {k: v for k, v in record.items() if k != "trained_on"}


def _alias_start(store: Store, alias: str) -> str | None:
    """The model an alias pointed to first (the loop's base), None when it never was set."""
    from heredity.loop import alias_history

    moves = alias_history(store, alias)
    return moves[0]["to"] if moves else None


def _arena_pair(store: Store, alias: str) -> list[str]:
    """The arena's default pair: where ``alias`` points now, and where it pointed before (or, when it never
    moved from anywhere, the model it started from); 400 when that is one model or none."""
    from heredity.loop import alias_history

    current = store.model_alias(alias)
    if current is None:
        raise ApiError(
            400,
            f"alias {alias!r} serves no model yet; name two models, or train a round on /loop first",
            "no_models",
            "models",
        )
    moves = alias_history(store, alias)
    before = next((m["from"] for m in reversed(moves) if m["to"] == current and m["from"]), None)
    other = before or (moves[0]["to"] if moves else None)
    if other is None or other == current:
        raise ApiError(
            400,
            f"alias {alias!r} has only served {current}; name two models to compare",
            "no_models",
            "models",
        )
    return [current, other]


async def _arena_answer(request: Request, host, body: ArenaRequest) -> tuple[str, str]:
    """(model id, answer) of one arena contestant (a loaded ``ModelHost``): the prompt as one user message in
    the model's chat template, generated on the model's worker like a chat completion (its queue and work
    bounds apply)."""
    from heredity.engine.sampling import SampleConfig, render_prompt
    from heredity.server.openai_api import _complete, _reserve, _room

    if not getattr(host.view, "chat_template", None):
        raise ApiError(
            400, f"model {host.id} has no chat template; the arena needs chat models", "no_chat_template"
        )
    text = render_prompt(host.view, [{"role": "user", "content": body.prompt}], SampleConfig())
    ids = host.view(text, add_special_tokens=False)["input_ids"]
    max_new = _room(host, len(ids), body.max_tokens, "prompt", "the prompt")
    cfg = SampleConfig(temperature=body.temperature, max_new_tokens=max_new, chat=True, batch_size=1)
    res = _reserve(host, request, len(ids) + max_new, f"a prompt of {len(ids)} tokens, max_tokens {max_new}")
    try:
        comps = await _complete(request, host, [ids], cfg, False, None)
    finally:
        res.release()
    return host.id, comps[0].text


class LoopJobs:
    """Rounds of the heredity loop (``heredity.loop.run_round``: minutes of CPU) on a thread of their own, one
    at a time, never on the event loop. A job is ``running`` (its ``log`` grows with the round's progress
    lines), then ``done`` with the round's ``record`` or ``failed`` with a one-line ``error`` (a refusal says
    how much feedback there is and how much is needed). The last ``keep`` jobs are kept, in memory only."""

    MAX_LOG = 200  # progress lines kept per job

    def __init__(self, keep: int = 32):
        self.keep = keep
        self._jobs: OrderedDict[str, dict] = OrderedDict()
        self._running: str | None = None
        self._lock = threading.Lock()

    def start(self, store: Store, config) -> str:
        """Start a round on ``config`` (a LoopConfig) and return its job id; ApiError 409 while one runs."""
        with self._lock:
            if self._running is not None:
                raise ApiError(
                    409,
                    f"round {self._running} is still running; one round runs at a time: wait for it "
                    f"(GET /api/loop/jobs/{self._running})",
                    "round_running",
                )
            jid = f"j-{secrets.token_hex(8)}"
            self._jobs[jid] = {
                "id": jid,
                "state": "running",
                "alias": config.alias,
                "method": config.method,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "log": [],
            }
            self._running = jid
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
        thread = threading.Thread(
            target=self._run, args=(jid, store, config), name=f"loop-{jid}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._jobs.pop(jid, None)
                self._running = None
            raise
        return jid

    def _run(self, jid: str, store: Store, config) -> None:
        from heredity import loop

        hide = [(a.decode(), b.decode()) for a, b in hidden_paths(store)]

        def scrub(text: str) -> str:
            for needle, replacement in hide:
                text = text.replace(needle, replacement)
            return text

        def say(line: str) -> None:
            with self._lock:
                log = self._jobs[jid]["log"]
                if len(log) < self.MAX_LOG:
                    log.append(scrub(str(line)))

        end: dict = {"state": "failed", "error": "the round stopped before it ended"}
        try:
            record = loop.run_round(store, config, progress=False, on_progress=say)
            end = {"state": "done", "record": finite_json(_round_view(record))}
        except HeredityError as e:  # a refusal, or a model or setting the round cannot use: one line
            end = {"state": "failed", "error": scrub(_first_error(e))}
        except Exception as e:  # noqa: BLE001 - reported in the job, with the traceback in the server's log
            LOG.exception("loop round %s failed", jid)
            end = {
                "state": "failed",
                "error": scrub(f"the round failed: {type(e).__name__}: {_first_error(e)}"),
            }
        finally:
            with self._lock:
                self._jobs[jid].update(end, ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                self._running = None

    def get(self, jid: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(jid)
            return None if job is None else {**job, "log": list(job["log"])}

    def last(self) -> dict | None:
        """The job started last (the one running, if any), or None."""
        with self._lock:
            jid = next(reversed(self._jobs), None)
        return None if jid is None else self.get(jid)


class Arena:
    """The arena's battles: a prompt and two (model, answer) slots, A and B, in a random order; the last
    ``keep`` are kept, in memory only, each votable once."""

    def __init__(self, keep: int = 256):
        self.keep = keep
        self._battles: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, prompt: str, answers: list[tuple[str, str]], params: dict) -> dict:
        """Keep a battle; answers ``{id, answers: [{slot, text}]}`` without the models."""
        order = list(answers)
        secrets.SystemRandom().shuffle(order)
        bid = f"b-{secrets.token_hex(8)}"
        slots = dict(zip("AB", order, strict=True))
        with self._lock:
            self._battles[bid] = {"prompt": prompt, "slots": slots, "params": params, "voted": None}
            while len(self._battles) > self.keep:
                self._battles.popitem(last=False)
        return {"id": bid, "answers": [{"slot": s, "text": text} for s, (_, text) in slots.items()]}

    def claim(self, bid: str, winner: str) -> dict:
        """The battle, marked voted for ``winner``; 404 when it is unknown (or forgotten), 409 when voted."""
        with self._lock:
            battle = self._battles.get(bid)
            if battle is None:
                raise ApiError(
                    404,
                    f"no battle {bid}: the server keeps the last {self.keep} in memory; start a new one",
                    "battle_not_found",
                )
            if battle["voted"] is not None:
                raise ApiError(409, f"battle {bid} already has a vote ({battle['voted']})", "already_voted")
            battle["voted"] = winner
            return {**battle, "slots": dict(battle["slots"])}

    def unclaim(self, bid: str) -> None:
        """Withdraw a vote whose feedback could not be stored."""
        with self._lock:
            if bid in self._battles:
                self._battles[bid]["voted"] = None


def api_router() -> APIRouter:
    r = APIRouter(prefix="/api", tags=["lab"])

    @r.get("/conversations")
    def conversations(request: Request) -> dict:
        return {"data": request.app.state.conversations.list()}

    @r.post("/conversations", status_code=201)
    async def new_conversation(body: NewConversation, request: Request) -> dict:
        try:
            aid = await asyncio.to_thread(request.app.state.pool.resolve, body.model)
        except HeredityError as e:
            raise ApiError(404, str(e), "model_not_found", param="model") from None
        conv = request.app.state.conversations.create(aid, body.system_prompt, body.title, body.user)
        return conv.as_dict()

    @r.get("/conversations/{cid}")
    def conversation(request: Request, cid: str = PathParam(pattern=CONV_PATTERN)) -> dict:
        return _conv(request, cid).as_dict()

    @r.delete("/conversations/{cid}", status_code=204)
    def delete_conversation(request: Request, cid: str = PathParam(pattern=CONV_PATTERN)) -> Response:
        _conv(request, cid)
        request.app.state.conversations.delete(cid)
        return Response(status_code=204)

    @r.put("/conversations/{cid}/messages/{idx}/feedback")
    def feedback(
        body: Feedback,
        request: Request,
        cid: str = PathParam(pattern=CONV_PATTERN),
        idx: int = PathParam(ge=0, le=10_000),
    ) -> dict:
        _conv(request, cid)
        try:
            msg = request.app.state.conversations.feedback(cid, idx, body.rating, body.better)
        except KeyError:
            raise ApiError(404, f"conversation {cid} has no message {idx}", "message_not_found") from None
        return msg.__dict__

    @r.post("/export")
    async def export(body: ExportRequest, request: Request) -> dict:
        from heredity.data.feedback import export_feedback

        try:
            return await asyncio.to_thread(export_feedback, request.app.state.store, body.name)
        except HeredityError as e:
            raise ApiError(409, str(e), "nothing_to_export") from None

    @r.post("/explore")
    async def explore(body: ExploreRequest, request: Request) -> dict:
        from heredity.engine.explore import next_token
        from heredity.engine.sampling import SampleConfig, render_prompt

        host = await host_for(request, body.model)
        tok = host.view
        if body.chat and not getattr(tok, "chat_template", None):
            raise ApiError(
                400, f"model {body.model} has no chat template; untick 'chat template'", "no_chat_template"
            )
        text = render_prompt(tok, body.prompt, SampleConfig(chat=body.chat, system_prompt=body.system_prompt))
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise ApiError(
                422, "the prompt is empty; type something first", "invalid_request_error", param="prompt"
            )
        vocab = len(tok)
        if any(t >= vocab for t in body.tokens):
            raise ApiError(
                422,
                f"token ids must be below the vocabulary size {vocab}",
                "invalid_request_error",
                param="tokens",
            )
        ids = prompt_ids + list(body.tokens)
        if host.context and len(ids) >= host.context:
            raise ApiError(
                400,
                f"{len(ids)} tokens fill the model's context of {host.context}; step back or shorten the "
                "prompt",
                "context_length_exceeded",
            )
        layers, heads = host.model.config.num_hidden_layers, host.model.config.num_attention_heads
        if body.layer is not None and body.layer >= layers:
            raise ApiError(422, f"layer must be below {layers}", "invalid_request_error", param="layer")
        if body.head is not None and body.head >= heads:
            raise ApiError(422, f"head must be below {heads}", "invalid_request_error", param="head")
        # on the worker thread with the worker's own tokenizer (host.view belongs to the request side)
        if body.layer is not None and len(ids) > MAX_ATTN_TOKENS:
            raise ApiError(
                400,
                f"{len(ids)} tokens: attention is shown for at most {MAX_ATTN_TOKENS}; shorten the prompt "
                "or turn attention off (layer: null)",
                "context_length_exceeded",
                param="prompt",
            )
        fut = host.call(
            lambda model, wtok: next_token(model, wtok, ids, body.top_k, body.layer, body.head, ATTN_WINDOW)
        )
        out = await asyncio.wrap_future(fut)
        if out["attention"] is not None:
            out["attention"] = [[round(v, 4) for v in row] for row in out["attention"]]
        out.update(ids=ids, prompt_len=len(prompt_ids), model=host.id)
        return out

    @r.get("/status")
    def status(request: Request) -> dict:
        """Loaded models, their queues and how many requests each generation run carried."""
        hosts = list(request.app.state.pool.hosts.values())
        return {
            "version": __version__,
            "models": [
                {
                    "id": h.id,
                    "queued": h.jobs.qsize(),
                    "runs": len(h.batches),
                    "max_requests_per_run": max(h.batches, default=0),
                }
                for h in hosts
            ],
        }

    @r.get("/insights")
    def insights_json(request: Request, report: str | None = Query(None, pattern=ID_PATTERN)) -> dict:
        """The latest usage-insights report (or ``report``): only clusters that passed the privacy
        thresholds."""
        store = request.app.state.store
        if report:
            art = _artifact(request, report)
        else:
            runs = _insights_reports(store)
            if not runs:
                raise ApiError(
                    404,
                    "no insights report yet; run `heredity insights` (or `heredity insights --demo`)",
                    "insights_not_found",
                )
            art = runs[-1]
        if not (art.path / "report.json").is_file() or art.name != "insights":
            raise ApiError(404, f"{art.id} is not an insights report", "insights_not_found")
        return {"id": art.id, **json.loads((art.path / "report.json").read_text())}

    @r.get("/artifacts")
    def artifacts(
        request: Request, kind: str | None = Query(None, pattern="^(model|adapter|dataset|report)$")
    ) -> dict:
        return {
            "data": [
                {
                    "id": a.id,
                    "kind": a.kind,
                    "name": a.name,
                    "size_bytes": a.size_bytes,
                    "created_at": a.created_at.isoformat(),
                }
                for a in request.app.state.store.list(kind)
            ]
        }

    @r.get("/artifacts/{aid}")
    def artifact(request: Request, aid: str = PathParam(pattern=ID_PATTERN)) -> dict:
        _artifact(request, aid)
        return artifact_detail(request.app.state.store, aid)

    @r.get("/lineage")
    def lineage(request: Request, root: str | None = Query(None, pattern=ID_PATTERN)) -> dict:
        from heredity.reports.lineage import graph

        if root:
            _artifact(request, root)
        return graph(request.app.state.store, root)

    # ---- prompt templates (heredity.prompts); untrusted template work on PromptWorkers, time-limited ----

    @r.get("/prompts")
    def prompts(request: Request) -> dict:
        """Every stored template, sorted by name: ``name``, ``versions`` (how many), ``latest`` (id),
        ``latest_version``, ``aliases`` ({alias: id}), ``description``, ``updated_at``, and the latest
        version's ``format`` and ``variables`` (names)."""
        return {"data": prompt_list(request.app.state.store)}

    @r.post("/prompts", status_code=201)
    async def create_prompt(body: NewPrompt, request: Request) -> dict:
        """Store a template, checked in full first (a bad one is 400 in one line and nothing is stored); the
        same content again is the same id and no new version (``new`` says which). Answers what
        ``GET /api/prompts/{ref}/template`` does, plus ``new`` and ``unused_variables``."""
        from heredity.prompts import create_prompt, parse_template, prompt_info

        store: Store = request.app.state.store
        data = body.model_dump(mode="json")

        def check():
            template = parse_template(data)
            return template, template.unused_variables()

        try:
            template, unused = await request.app.state.prompt_workers.run(
                check, what=f"checking prompt template {body.name[:128]}"
            )
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_prompt") from None
        except RecursionError:
            raise ApiError(
                400, f"prompt template {body.name[:128]} nests too deeply; flatten it", "invalid_prompt"
            ) from None

        def store_it() -> dict:
            before = {a.id for a in store.prompt_versions(template.name)}
            aid = create_prompt(store, template)
            return {**prompt_info(store, aid), "new": aid not in before, "unused_variables": unused}

        try:
            return await asyncio.to_thread(store_it)
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_prompt") from None

    @r.post("/prompts/render")
    async def render_prompt(body: RenderPromptRequest, request: Request) -> dict:
        """The template ``ref`` names rendered with ``variables``: ``{id, name, format, text}`` for a text
        template, ``{id, name, format, messages}`` for a messages one. An unknown reference is 404; a missing,
        unknown or mistyped variable, a refusal by the sandbox, or a render over the time limit is 400."""
        from heredity.prompts import load_prompt, render

        aid = await _prompt_id(request, body.ref)
        try:
            template = await asyncio.to_thread(load_prompt, request.app.state.store, aid)
        except HeredityError as e:
            raise ApiError(404, str(e), "prompt_not_found", param="ref") from None
        try:
            out = await request.app.state.prompt_workers.run(
                render, template, body.variables, what=f"rendering prompt template {template.name}"
            )
        except HeredityError as e:
            raise ApiError(400, str(e), "render_failed") from None
        fmt = "text" if isinstance(out, str) else "messages"
        return {"id": aid, "name": template.name, "format": fmt, fmt: out}

    @r.get("/prompts/diff")
    async def diff_prompts(
        request: Request,
        a: str | None = Query(None, min_length=1, max_length=300, description="the version to diff from"),
        b: str | None = Query(None, min_length=1, max_length=300, description="the version to diff to"),
    ) -> dict:
        """``{a, b, diff}``: the unified diff from version ``a`` to version ``b`` (any references; "" when
        they are the same). Without ``a`` and ``b`` this is ``GET /api/prompts/{name}`` of a template named
        ``diff``."""
        from heredity.prompts import diff_prompts

        store: Store = request.app.state.store
        if a is None and b is None:
            return await asyncio.to_thread(_prompt_detail_or_404, store, "diff")
        if a is None or b is None:
            missing = "a" if a is None else "b"
            raise ApiError(
                422,
                f"{missing}: give both a and b, references to two versions",
                "invalid_request_error",
                missing,
            )
        ida, idb = await _prompt_id(request, a, "a"), await _prompt_id(request, b, "b")
        try:
            text = await request.app.state.prompt_workers.run(
                diff_prompts, store, ida, idb, what="comparing the two versions"
            )
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None
        return {"a": ida, "b": idb, "diff": text}

    @r.get("/prompts/{ref}/template")
    def prompt_template(request: Request, ref: str = PathParam(pattern=PROMPT_REF_PATTERN)) -> dict:
        """One version: ``id``, ``name``, ``version``, ``versions`` (how many the name has), ``aliases``
        (pointing to it), ``created_at`` and ``template`` (name, text or messages, variables with type,
        required, default and description, description). ``ref`` is any reference but the ``prompts:/``
        forms (``NAME``, ``NAME:N``, ``NAME@ALIAS``, an id or id prefix)."""
        from heredity.prompts import prompt_info

        try:
            return prompt_info(request.app.state.store, ref)
        except HeredityError as e:
            raise ApiError(404, str(e), "prompt_not_found", param="ref") from None

    @r.get("/prompts/{name}")
    def prompt(request: Request, name: str = PathParam(max_length=200)) -> dict:
        """Template ``name``: its versions, where its aliases point, every alias move (``prompt_detail``)."""
        return _prompt_detail_or_404(request.app.state.store, name)

    @r.post("/prompts/{name}/aliases/{alias}")
    async def move_alias(
        body: MoveAlias,
        request: Request,
        name: str = PathParam(max_length=200),
        alias: str = PathParam(max_length=100),
    ) -> dict:
        """Point ``name@alias`` at the version ``ref`` names (or version number ``ref``), recorded in the
        alias history with who moved it (``alias_mover``). Answers ``heredity.prompts.set_alias``'s dict
        (``moved`` is false, and nothing is recorded, when it already pointed there)."""
        from heredity.prompts import set_alias

        store: Store = request.app.state.store
        await asyncio.to_thread(_prompt_detail_or_404, store, name)
        try:
            return await asyncio.to_thread(set_alias, store, name, alias, body.ref, by=alias_mover(request))
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_alias") from None

    # ---- the heredity loop (heredity.loop): rounds on a thread of their own, the alias, the arena ----------

    @r.get("/loop")
    def loop_state(request: Request) -> dict:
        """``aliases`` ({alias: the model or adapter it serves}), ``history`` ({alias: its moves, oldest
        first}), ``rounds`` (every round record, oldest first per alias, without the list of the feedback it
        trained on) and ``job`` (the last round started here: GET /api/loop/jobs/{id}'s answer, or null)."""
        from heredity import loop

        store: Store = request.app.state.store
        names = loop.aliases(store)
        return finite_json(
            {
                "aliases": names,
                "history": {a: loop.alias_history(store, a) for a in names},
                "rounds": [_round_view(rec) for rec in loop.rounds(store)],
                "job": request.app.state.loop_jobs.last(),
            }
        )

    @r.post("/loop/rounds", status_code=202)
    async def start_round(body: LoopRound, request: Request) -> dict:
        """Start one round of the loop (``heredity.loop.run_round``) on a thread of its own and answer at once
        ``{job, alias, base}``; follow it at GET /api/loop/jobs/{job}. One round runs at a time (409 while
        one does). ``base`` (any name or id GET /v1/models lists) left out: the model the alias started from,
        when it has been set before, else LoopConfig's default."""
        from heredity.loop import LoopConfig

        store: Store = request.app.state.store
        data = body.model_dump()
        if "base" not in body.model_fields_set:
            start = await asyncio.to_thread(_alias_start, store, body.alias)
            if start is not None:
                data["base"] = start
        else:  # named as every route names a model: no paths or hub ids over HTTP
            try:
                data["base"] = await asyncio.to_thread(request.app.state.pool.resolve, body.base)
            except HeredityError as e:
                raise ApiError(404, str(e), "model_not_found", param="base") from None
        config = LoopConfig.model_validate(data)
        jid = request.app.state.loop_jobs.start(store, config)
        return {"job": jid, "alias": config.alias, "base": config.base}

    @r.get("/loop/jobs/{jid}")
    def loop_job(request: Request, jid: str = PathParam(pattern=JOB_PATTERN)) -> dict:
        """A round job: ``id``, ``state`` (running, done or failed), ``log`` (its progress lines), ``record``
        (the round, when done) or ``error`` (one line, when failed: a refusal says what feedback is
        missing)."""
        job = request.app.state.loop_jobs.get(jid)
        if job is None:
            raise ApiError(
                404,
                f"no round job {jid} (jobs live in the server's memory: a restart forgets them)",
                "job_not_found",
            )
        return job

    @r.post("/loop/aliases/{alias}/rollback")
    async def rollback_alias(
        body: EmptyBody, request: Request, alias: str = PathParam(pattern=ALIAS_PATTERN)
    ) -> dict:
        """Move the alias back to where it pointed before its last move (``heredity.loop.rollback``); 409 when
        it has nothing to go back to. Answers the move ``{alias, from, to, moved, reason}``."""
        from heredity import loop

        store: Store = request.app.state.store
        if await asyncio.to_thread(store.model_alias, alias) is None:
            raise ApiError(404, f"no model alias {alias!r} in this store; a round sets it", "alias_not_found")
        try:
            return await asyncio.to_thread(loop.rollback, store, alias, alias_mover(request))
        except HeredityError as e:
            raise ApiError(409, str(e), "nothing_to_roll_back") from None

    @r.post("/loop/aliases/{alias}/promote")
    async def promote_alias(
        body: PromoteModel, request: Request, alias: str = PathParam(pattern=ALIAS_PATTERN)
    ) -> dict:
        """Point the alias at ``model`` (any name or id GET /v1/models lists) by hand, recorded with the
        reason "set by hand" and who moved it. Answers the move ``{alias, from, to, moved, reason}``."""
        from heredity import loop

        store: Store = request.app.state.store
        try:
            loop.LoopConfig(alias=alias)  # the alias's own checks, before any model is looked up
        except ValueError as e:
            raise ApiError(400, _first_error(e), "invalid_alias", param="alias") from None
        try:
            aid = await asyncio.to_thread(request.app.state.pool.resolve, body.model)
        except HeredityError as e:
            raise ApiError(404, str(e), "model_not_found", param="model") from None
        try:
            return await asyncio.to_thread(
                loop.move_alias, store, alias, aid, "set by hand", alias_mover(request)
            )
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_alias", param="model") from None

    @r.post("/arena")
    async def arena(body: ArenaRequest, request: Request) -> dict:
        """Two models answer ``prompt`` (by default where the alias points now and where it pointed before, or
        the model it started from); answers ``{id, answers: [{slot: A, text}, {slot: B, text}]}`` in a
        shuffled order, without saying which model wrote which. Vote at POST /api/arena/{id}/vote."""
        store: Store = request.app.state.store
        pool: ModelPool = request.app.state.pool
        names = body.models or await asyncio.to_thread(_arena_pair, store, body.alias)
        ids = []
        for name in names:
            try:
                ids.append(await asyncio.to_thread(pool.resolve, name))
            except HeredityError as e:
                raise ApiError(404, str(e), "model_not_found", param="models") from None
        if ids[0] == ids[1]:
            raise ApiError(
                400,
                f"both names stand for {ids[0]}; an arena needs two different models",
                "same_model",
                "models",
            )
        # loaded one after the other (two models loading at once on two threads can break transformers'
        # loading), then both answer at once on their own workers
        hosts = [await host_for(request, aid) for aid in ids]
        answers = await asyncio.gather(*(_arena_answer(request, host, body) for host in hosts))
        params = {"temperature": body.temperature, "max_tokens": body.max_tokens}
        return request.app.state.arena.add(body.prompt, list(answers), params)

    @r.post("/arena/{bid}/vote")
    def arena_vote(body: ArenaVote, request: Request, bid: str = PathParam(pattern=BATTLE_PATTERN)) -> dict:
        """Store the vote as feedback the loop reads: one conversation per answer, the winner's answer rated
        +1 and the loser's −1 (the same prompt: a preference pair). Answers which model wrote which slot; a
        second vote on one battle is 409."""
        arena_: Arena = request.app.state.arena
        battle = arena_.claim(bid, body.winner)
        convs: Conversations = request.app.state.conversations
        out = {}
        try:
            for slot, (model, text) in battle["slots"].items():
                conv = convs.create(model, None, f"arena {bid} · {slot}")
                idx = convs.append(
                    conv.id,
                    [{"role": "user", "content": battle["prompt"]}],
                    {
                        "role": "assistant",
                        "content": text,
                        "model": model,
                        "params": {**battle["params"], "arena": bid},
                    },
                )
                rating = 1 if slot == body.winner else -1
                convs.feedback(conv.id, idx, rating=rating)
                out[slot] = {"model": model, "conversation_id": conv.id, "message_idx": idx, "rating": rating}
        except BaseException:
            arena_.unclaim(bid)
            raise
        return {"id": bid, "winner": body.winner, "answers": out}

    return r


# ---- pages --------------------------------------------------------------------------------------------


def page_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    def render(request: Request, name: str, **ctx) -> HTMLResponse:
        return request.app.state.templates.TemplateResponse(request, name, {"version": __version__, **ctx})

    @r.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/chat", status_code=303)

    @r.get("/login")
    def login_form(next: str = "/chat") -> HTMLResponse:
        return HTMLResponse(login_page(next))

    @r.post("/login")
    def login(request: Request, key: str = Form(""), next: str = Form("/chat")) -> Response:
        """Check the key (an address with too many wrong ones gets 429 before any check) and set a session
        cookie."""
        want = request.app.state.settings.api_key
        if want:
            failures: AuthFailures = request.app.state.auth_failures
            addr = request.client.host if request.client else "unknown"
            wait = failures.retry_after(addr)
            if wait > 0:
                return HTMLResponse(
                    login_page(next, too_many_failures(wait)),
                    status_code=429,
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            if not secrets.compare_digest(key.encode("utf-8", "surrogateescape"), want.encode()):
                failures.add(addr)
                return HTMLResponse(
                    login_page(next, "wrong key; paste the server's HEREDITY_API_KEY"), status_code=401
                )
        target = safe_next(next)
        resp = RedirectResponse(target, status_code=303)
        if want:
            token = request.app.state.sessions.new()
            resp.set_cookie(
                COOKIE,
                token,
                max_age=int(request.app.state.settings.session_hours * 3600),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return resp

    @r.post("/logout")
    def logout(request: Request) -> Response:
        """Revoke this browser's session token."""
        token = session_token({k.lower(): v for k, v in request.headers.items()})
        request.app.state.sessions.discard(token)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @r.get("/chat")
    def chat(request: Request) -> HTMLResponse:
        return render(request, "chat.html", page="chat")

    @r.get("/explore")
    def explore(request: Request) -> HTMLResponse:
        return render(request, "explore.html", page="explore")

    @r.get("/prompts")
    def prompts_page(request: Request) -> HTMLResponse:
        """The prompt templates: versions, text, variables, render, diff, aliases (through /api/prompts)."""
        return render(request, "prompts.html", page="prompts")

    @r.get("/loop")
    def loop_page(request: Request) -> HTMLResponse:
        """The heredity loop: its rounds, the alias and its moves, training from feedback, rollback, the
        arena (through /api/loop and /api/arena)."""
        return render(request, "loop.html", page="loop")

    @r.get("/lineage")
    def lineage(request: Request, root: str | None = Query(None, pattern=ID_PATTERN)) -> HTMLResponse:
        from heredity.reports.lineage import as_svg, graph

        if root:
            _artifact(request, root)
        g = graph(request.app.state.store, root)
        return render(
            request,
            "lineage.html",
            page="lineage",
            svg=as_svg(g, highlight=root),
            root=root,
            counts={
                k: sum(1 for n in g["nodes"] if n["kind"] == k)
                for k in ("model", "adapter", "dataset", "report", "tokenizer", "prompt")
            },
            n_edges=len(g["edges"]),
        )

    @r.get("/reports")
    def reports(request: Request) -> HTMLResponse:
        store = request.app.state.store
        reps = [a for a in store.list("report") if (a.path / "report.md").is_file()]
        return render(request, "reports.html", page="reports", reports=list(reversed(reps)))

    @r.get("/insights")
    def insights_page(request: Request, report: str | None = Query(None, pattern=ID_PATTERN)) -> HTMLResponse:
        store = request.app.state.store
        runs = list(reversed(_insights_reports(store)))
        chosen = _artifact(request, report) if report else (runs[0] if runs else None)
        data = json.loads((chosen.path / "report.json").read_text()) if chosen is not None else None
        if data is not None:
            by_parent: dict = {}
            for c in data["levels"][0]:
                by_parent.setdefault(c.get("parent"), []).append(c)
            data["by_parent"] = {
                k: sorted(v, key=lambda c: -c["conversations"]) for k, v in by_parent.items()
            }
            data["top"] = (
                sorted(data["levels"][-1], key=lambda p: -p["conversations"])
                if len(data["levels"]) > 1
                else []
            )
        return render(request, "insights.html", page="insights", runs=runs, chosen=chosen, r=data)

    @r.get("/artifacts/{aid}")
    def artifact_page(request: Request, aid: str = PathParam(pattern=ID_PATTERN)) -> HTMLResponse:
        _artifact(request, aid)
        store = request.app.state.store
        d = artifact_detail(store, aid)
        report_html = None
        md = store.path(aid) / "report.md"
        if md.is_file():
            from markdown_it import MarkdownIt

            report_html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md.read_text())
        preview = None
        if d["kind"] == "dataset":
            preview = _preview(store.path(aid))
        episodes = preview["total"] if preview and EPISODE_COLUMNS <= set(preview["columns"]) else 0
        return render(
            request,
            "artifact.html",
            page="lineage",
            a=d,
            report_html=report_html,
            preview=preview,
            episodes=episodes,
            config_json=json.dumps(d["step"]["config"] if d["step"] else {}, indent=2),
            metrics_json=json.dumps(d["step"]["metrics"] if d["step"] else {}, indent=2),
            meta_json=json.dumps(d["meta"], indent=2),
            images=[f["path"] for f in d["files"] if f["path"].endswith((".png", ".svg", ".jpg"))],
        )

    @r.get("/artifacts/{aid}/episodes/{k}")
    def episode_page(request: Request, k: int, aid: str = PathParam(pattern=ID_PATTERN)) -> HTMLResponse:
        """One agentic episode of a transcript dataset (the scheming experiment's): its messages, tool calls
        and results, the file diffs of the sandbox, and the scores."""
        art = _artifact(request, aid)
        ep = _episode(art.path, k)
        if ep is None:
            raise ApiError(
                404,
                f"artifact {aid} has no episode {k} (it is not a transcript dataset, or has fewer rows)",
                "episode_not_found",
            )
        return render(request, "episode.html", page="lineage", a=art, k=k, **ep)

    @r.get("/artifacts/{aid}/files/{rel:path}")
    def artifact_file(request: Request, rel: str, aid: str = PathParam(pattern=ID_PATTERN)) -> FileResponse:
        art = _artifact(request, aid)
        root = art.path.resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise ApiError(404, f"artifact {aid} has no file {rel!r}", "file_not_found")
        return file_response(target)

    return r


INLINE_IMAGES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
TEXT_FILES = (".txt", ".md", ".csv", ".tsv", ".log", ".yaml", ".yml", ".toml", ".jinja", ".jsonl", ".py")


def file_response(path: Path) -> FileResponse:
    """An artifact's file as inert content: png / jpeg / gif / webp images inline, JSON as application/json,
    text as text/plain; anything else (HTML, SVG, XML, weights, parquet) as an attachment to download. Every
    answer carries nosniff and a Content-Security-Policy under which nothing in the file can run, even if a
    browser renders it (an imported model directory may hold any file)."""
    suffix = path.suffix.lower()
    disposition = "inline"
    if suffix in INLINE_IMAGES:
        media = INLINE_IMAGES[suffix]
    elif suffix == ".json":
        media = "application/json"
    elif suffix in TEXT_FILES:
        media = "text/plain; charset=utf-8"
    else:
        media, disposition = mimetypes.guess_type(path.name)[0] or "application/octet-stream", "attachment"
    return FileResponse(
        path,
        media_type=media,
        filename=path.name,
        content_disposition_type=disposition,
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": FILE_CSP},
    )


def _insights_reports(store) -> list:
    return [a for a in store.list("report") if a.name == "insights" and (a.path / "report.json").is_file()]


EPISODE_COLUMNS = {"episode", "messages", "diffs"}


def _episode(path: Path, k: int) -> dict | None:
    """Row ``k`` of a transcript dataset, ready for the page: messages (tool calls' arguments parsed), unified
    diffs per changed file, and the ``score_*`` columns."""
    import difflib

    import pyarrow.parquet as pq

    f = path / "data.parquet"
    if not f.is_file() or not EPISODE_COLUMNS <= set(pq.ParquetFile(f).schema_arrow.names):
        return None
    rows = pq.read_table(f).to_pylist()
    if not 0 <= k < len(rows):
        return None
    row = rows[k]
    messages = []
    for m in json.loads(row["messages"]):
        calls = [
            {"name": c["function"]["name"], "arguments": c["function"].get("arguments") or "{}"}
            for c in m.get("tool_calls") or []
        ]
        messages.append({"role": m["role"], "content": m.get("content") or "", "calls": calls})
    diffs = []
    for host, files in json.loads(row["diffs"]).items():
        for p, d in files.items():
            before, after = d.get("before"), d.get("after")
            lines = difflib.unified_diff(
                (before or "").splitlines(),
                (after or "").splitlines(),
                f"{host}:{p} (before)",
                f"{host}:{p} (after)",
                lineterm="",
            )
            state = "created" if before is None else "deleted" if after is None else "changed"
            diffs.append({"file": f"{host}:{p}", "state": state, "diff": "\n".join(lines)})
    scores = {c[6:]: row[c] for c in row if c.startswith("score_")}
    return {"messages": messages, "diffs": diffs, "scores": scores, "total": len(rows)}


def _preview(path: Path, rows: int = 20) -> dict | None:
    import pyarrow.parquet as pq

    f = path / "data.parquet"
    if not f.is_file():
        return None
    pf = pq.ParquetFile(f)
    table = next(pf.iter_batches(batch_size=rows), None)
    data = table.to_pylist() if table is not None else []

    def cell(v) -> str:
        s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        return s if len(s) <= 300 else s[:299] + "…"

    return {
        "columns": pf.schema_arrow.names,
        "rows": [[cell(r[c]) for c in pf.schema_arrow.names] for r in data],
        "total": pf.metadata.num_rows,
    }


def serve(store: Store | None = None, settings: Settings | None = None) -> None:
    """Run the app on Uvicorn (blocking)."""
    import uvicorn

    settings = settings or Settings()
    settings.check()
    app = create_app(store, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
