"""An OpenAI-compatible HTTP server for a checkpoint (`minimind serve CKPT`), on the standard library only.

/v1/chat/completions (whole or server-sent events), /v1/completions, /v1/models, /health, and / (a chat page).
One generation at a time (a lock); reasoning comes back as `reasoning_content`; with `tools` (models whose
tokenizer has minimind-3's or MiniMind2's template) the calls the model writes come back as `tool_calls`, and
`tool` messages carry their results back. Extra request fields: top_k, repetition_penalty, enable_thinking
(or open_thinking), truncate (see book/use.md). openai_schema checks the request fields and words the errors;
this module is the HTTP side and the model behind it."""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from ..data.tokenizer import TOOL_TEMPLATES
from ..data.tools import ToolCallSplitter
from .chat import GenerationSettings, Reply, ThinkSplitter, fit_prompt, stream_text
from .openai_schema import APIError, forced_call_prefix, generation_settings, parse_messages, parse_tools, usage

API_KEY_ENV = "MINIMIND_API_KEY"
MAX_BODY = 4 * 1024 * 1024
STATIC = Path(__file__).parent / "static"


class Engine:
    """The model, its tokenizer and a lock: one generation at a time, whoever asks."""

    def __init__(self, model, tokenizer, name: str = "minimind", default_max_tokens: int = 512):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.context = model.config.max_position_embeddings
        self.default_max_tokens = default_max_tokens
        self.lock = threading.Lock()
        self.created = int(time.time())
        self.stats = {"requests": 0, "completion_tokens": 0, "generation_seconds": 0.0}

    def settings(self, body: dict, default_max: Optional[int] = None) -> GenerationSettings:
        return generation_settings(body, default_max or self.default_max_tokens, self.context)

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise APIError(400, "'model' must be a string", "model", "invalid_type")
        if name and name != self.name:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.name!r} "
                                "(see GET /v1/models)", "model", "model_not_found")

    def chat_prompt(self, body: dict, settings: GenerationSettings, tools: Optional[list] = None,
                    prefix: str = "") -> tuple[list[int], int, Optional[bool]]:
        msgs = parse_messages(body)
        thinking = body.get("enable_thinking")
        kwargs = body.get("chat_template_kwargs")
        if isinstance(kwargs, dict) and "enable_thinking" in kwargs:
            thinking = kwargs["enable_thinking"]
        if body.get("open_thinking") is True or (isinstance(kwargs, dict) and kwargs.get("open_thinking") is True):
            thinking = True  # minimind-3's name for the same switch
        if thinking is not None and not isinstance(thinking, bool):
            raise APIError(400, "'enable_thinking' must be true, false or null", "enable_thinking", "invalid_type")
        uses_tools = tools or any(m["role"] == "tool" or m.get("tool_calls") for m in msgs)
        if uses_tools and getattr(self.tokenizer, "template", "minimind") not in TOOL_TEMPLATES:
            raise APIError(400, "this model's chat template (the course's) has no tools: serve a model whose "
                                "tokenizer has minimind-3's template (trained with --template minimind3, or "
                                "MiniMind's own)", "tools", "invalid_value")
        extra = {"tools": tools} if tools else {}
        ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 enable_thinking=thinking, **extra)
        if prefix:
            ids = ids + self.tokenizer.encode(prefix)
        dropped = 0
        if len(ids) >= self.context:
            if body.get("truncate") is not True:
                raise APIError(400, f"the messages are {len(ids)} tokens, longer than this model's context of "
                                    f"{self.context} tokens: shorten them, or send \"truncate\": true to drop the "
                                    "oldest turns", "messages", "context_length_exceeded")
            if tools or prefix:
                raise APIError(400, f"the messages and tools are {len(ids)} tokens, longer than this model's "
                                    f"context of {self.context} tokens: shorten them", "messages",
                               "context_length_exceeded")
            try:
                ids, dropped = fit_prompt(self.tokenizer, msgs, self.context, 1, thinking)
            except ValueError as err:
                raise APIError(400, str(err), "messages", "context_length_exceeded") from None
        return ids, dropped, thinking

    def completion_prompt(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            ids = list(prompt)
            if min(ids) < 0 or max(ids) >= self.model.config.vocab_size:
                raise APIError(400, f"token ids must lie in [0, {self.model.config.vocab_size})", "prompt",
                               "invalid_value")
        elif isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif prompt is None:
            raise APIError(400, "'prompt' is required", "prompt", "missing_required_parameter")
        else:
            raise APIError(400, "'prompt' must be a string (or one string in a list, or a list of token ids)",
                           "prompt", "invalid_type")
        if not ids:
            ids = [self.tokenizer.bos_token_id]
        if len(ids) >= self.context:
            raise APIError(400, f"the prompt is {len(ids)} tokens, longer than this model's context of "
                                f"{self.context} tokens: shorten it", "prompt", "context_length_exceeded")
        return ids

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, reply: Reply):
        """Yield text pieces; holds the model's lock from the first piece to the last (or to close())."""
        with self.lock:
            yield from stream_text(self.model, self.tokenizer, prompt_ids, settings, reply)
            self.stats["requests"] += 1
            self.stats["completion_tokens"] += reply.completion_tokens
            self.stats["generation_seconds"] += reply.seconds


class Handler(BaseHTTPRequestHandler):
    engine: Engine = None
    api_key: Optional[str] = None
    cors_origins: tuple = ()
    server_version = "MiniMind"
    timeout = 30  # seconds a client may take to send its request (then 408)

    def log_message(self, fmt, *args):  # quiet unless asked
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    # -- plumbing ---------------------------------------------------------------------------------------
    def _send_json(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self._cors()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _cors(self):
        """CORS headers only for origins the user allowed (`--cors ORIGIN`); none by default, so a web page
        elsewhere cannot read this server's answers."""
        origin = self.headers.get("Origin") if getattr(self, "headers", None) else None
        if origin and (origin in self.cors_origins or "*" in self.cors_origins):
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")

    def _client_left(self) -> bool:
        """Whether the client closed its end: the socket reads as ready with nothing in it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _while_connected(self, pieces, every: int = 4):
        """The pieces of a reply sent whole at the end, abandoned (the model freed) when the client leaves."""
        try:
            for i, piece in enumerate(pieces):
                if i % every == every - 1 and self._client_left():
                    raise ConnectionResetError("the client went away")
                yield piece
        finally:
            pieces.close()

    def _error(self, err: APIError) -> None:
        self._send_json(err.status, err.body())

    def _authorised(self) -> bool:
        if not self.api_key:
            return True
        auth = self.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if given and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return True
        self._error(APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key"))
        return False

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(411, "a Content-Length header is required", code="length_required")
        try:
            length = int(length)
        except ValueError:
            raise APIError(400, "bad Content-Length header", code="invalid_request") from None
        if length < 0:
            raise APIError(400, f"Content-Length is {length}: it must be the body's size in bytes",
                           code="invalid_request")
        if length > MAX_BODY:
            raise APIError(413, f"the request body is {length} bytes; at most {MAX_BODY} are accepted",
                           code="request_too_large")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise APIError(408, f"the body did not arrive within {self.timeout} s (Content-Length {length})",
                           code="request_timeout") from None
        if len(raw) < length:
            self.close_connection = True
            raise APIError(400, f"the body has {len(raw)} bytes, not the {length} of Content-Length",
                           code="invalid_request")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise APIError(400, f"the request body is not valid JSON: {why}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_type")
        return body

    def send_error(self, code, message=None, explain=None):
        """The standard library's errors (a bad request line, an unknown method) as JSON, like every other."""
        if code == 501:  # a method without a do_ handler
            code, message = 405, f"method {self.command} is not allowed: use GET or POST"
        self.close_connection = True
        try:
            self._send_json(code, APIError(code, message or explain or "bad request").body(),
                            {"Allow": "GET, POST, OPTIONS"} if code == 405 else None)
        except OSError:
            pass

    def do_PUT(self):
        self.send_error(501)

    do_DELETE = do_PATCH = do_PUT

    # -- routes -----------------------------------------------------------------------------------------
    def do_OPTIONS(self):
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            data = (STATIC / "chat.html").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/health":
            e = self.engine
            self._send_json(200, {"status": "ok", "model": e.name, "context_length": e.context,
                                  "busy": e.lock.locked(), **e.stats})
        elif path == "/v1/models":
            if self._authorised():
                e = self.engine
                self._send_json(200, {"object": "list", "data": [
                    {"id": e.name, "object": "model", "created": e.created, "owned_by": "minimind",
                     "context_length": e.context}]})
        elif path.startswith("/v1/models/"):
            if self._authorised():
                name = path[len("/v1/models/"):]
                if name != self.engine.name:
                    self._error(APIError(404, f"the model {name!r} does not exist", "model", "model_not_found"))
                else:
                    self._send_json(200, {"id": name, "object": "model", "created": self.engine.created,
                                          "owned_by": "minimind"})
        else:
            self._error(APIError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completion}
        if path not in routes:
            self._error(APIError(404, f"no route POST {path}: use /v1/chat/completions or /v1/completions",
                                 code="not_found"))
            return
        if not self._authorised():
            return
        try:
            kind = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
            if kind != "application/json":  # text/plain etc. would let any web page post here unasked
                raise APIError(415, f"Content-Type is {kind!r}: send application/json", code="unsupported_media_type")
            body = self._body()
            routes[path](body)
        except APIError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; the generator was closed and the model is free again
        except Exception as err:  # never let one bad request take the server down
            try:
                self._error(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error"))
            except OSError:
                pass

    def _chat(self, body: dict) -> None:
        e = self.engine
        e.check_model(body)
        settings = e.settings(body)
        stream = self._flag(body, "stream")
        tools, forced = parse_tools(body)
        prefix = forced_call_prefix(forced)
        prompt, dropped, thinking = e.chat_prompt(body, settings, tools, prefix)
        reply = Reply(truncated_messages=dropped)
        pieces = e.generate(prompt, settings, reply)
        # a forced call's opening is part of the reply (the prompt wrote it), outside any <think> block
        splitter = ThinkSplitter(in_think=thinking is True and not prefix)
        calls = ToolCallSplitter() if tools else None

        def split(pieces_in):
            """("reasoning" | "content", text) and ("call", ToolCall) pieces of the reply."""
            for kind, text in pieces_in:
                if kind == "content" and calls is not None:
                    yield from calls.push(text)
                else:
                    yield kind, text

        def finish():
            return "tool_calls" if calls is not None and calls.calls and reply.finish_reason == "stop" \
                else reply.finish_reason

        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        extra = {"minimind": {"truncated_messages": dropped}} if dropped else {}
        if not stream:
            parts = list(split(splitter.push(prefix))) if prefix else []
            for text in self._while_connected(pieces):
                parts += split(splitter.push(text))
            parts += split(splitter.flush())
            if calls is not None:
                parts += calls.flush()
            content = "".join(p for k, p in parts if k == "content").strip()
            found = [p for k, p in parts if k == "call"]
            message = {"role": "assistant", "content": content if content or not found else None}
            if splitter.reasoning_text:
                message["reasoning_content"] = splitter.reasoning_text
            if found:
                message["tool_calls"] = [c.openai() for c in found]
            self._send_json(200, {"id": rid, "object": "chat.completion", "created": created, "model": e.name,
                                  "choices": [{"index": 0, "message": message, "logprobs": None,
                                               "finish_reason": finish()}],
                                  "usage": usage(reply), **extra})
            return
        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")

        def chunk(delta: dict, finish_reason=None, **more) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": e.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                    **more}

        def deltas(parts):
            for kind, piece in parts:
                if kind == "call":
                    yield chunk({"tool_calls": [piece.openai(index=calls.calls.index(piece))]})
                else:
                    yield chunk({"reasoning_content" if kind == "reasoning" else "content": piece})

        def events():
            yield chunk({"role": "assistant", "content": ""}, **extra)
            if prefix:
                yield from deltas(split(splitter.push(prefix)))
            for text in pieces:
                yield from deltas(split(splitter.push(text)))
            yield from deltas(split(splitter.flush()))
            if calls is not None:
                yield from deltas(calls.flush())
            yield chunk({}, finish())
            if include_usage:
                yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": e.name,
                       "choices": [], "usage": usage(reply)}
        self._send_events(events(), pieces)

    def _completion(self, body: dict) -> None:
        e = self.engine
        e.check_model(body)
        settings = e.settings(body, default_max=16)
        stream = self._flag(body, "stream")
        prompt = e.completion_prompt(body)
        echo = self._flag(body, "echo")
        reply = Reply()
        pieces = e.generate(prompt, settings, reply)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = e.tokenizer.decode(prompt, skip_special_tokens=True) if echo else ""

        def choice(text, finish=None):
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not stream:
            text = head + "".join(self._while_connected(pieces))
            self._send_json(200, {"id": rid, "object": "text_completion", "created": created, "model": e.name,
                                  "choices": [choice(text, reply.finish_reason)], "usage": usage(reply)})
            return

        def events():
            if head:
                yield {"id": rid, "object": "text_completion", "created": created, "model": e.name,
                       "choices": [choice(head)]}
            for text in pieces:
                yield {"id": rid, "object": "text_completion", "created": created, "model": e.name,
                       "choices": [choice(text)]}
            yield {"id": rid, "object": "text_completion", "created": created, "model": e.name,
                   "choices": [choice("", reply.finish_reason)], "usage": usage(reply)}
        self._send_events(events(), pieces)

    @staticmethod
    def _flag(body: dict, name: str) -> bool:
        value = body.get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise APIError(400, f"'{name}' must be true or false", name, "invalid_type")
        return value

    def _send_events(self, events, pieces) -> None:
        """Server-sent events: `data: {json}` blocks, then `data: [DONE]`; the connection closes at the end."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self._cors()
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                self.wfile.write(b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except APIError as err:  # headers are out: report the error as an event
            self.wfile.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        finally:
            pieces.close()  # a client that left frees the model at once


class MiniMindServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: a burst of clients waits instead of being reset
    verbose = False
    max_workers = 32  # connections served at once; more wait in the backlog (one model serves one at a time)

    def server_activate(self):
        super().server_activate()
        self.workers = threading.BoundedSemaphore(self.max_workers)

    def process_request(self, request, client_address):
        self.workers.acquire()  # blocks the accept loop, not the workers: excess clients queue in the backlog
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.workers.release()


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 8998, api_key: Optional[str] = None,
                model_name: str = "minimind", default_max_tokens: int = 512, verbose: bool = False,
                cors_origins=()) -> MiniMindServer:
    """A server bound to host:port (port 0: a free one, see server.server_address); call serve_forever().
    cors_origins: web origins allowed to call it from a browser ("*" for any); none by default."""
    engine = Engine(model, tokenizer, model_name, default_max_tokens)
    handler = type("BoundHandler", (Handler,), {"engine": engine, "api_key": api_key,
                                                "cors_origins": tuple(cors_origins)})
    server = MiniMindServer((host, port), handler)
    server.verbose = verbose
    server.engine = engine
    return server


def resolve_api_key(api_key: Optional[str] = None) -> Optional[str]:
    """The key clients must send: the one given, else $MINIMIND_API_KEY, else None (no key needed)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def serve(ckpt, host: str = "127.0.0.1", port: int = 8998, api_key: Optional[str] = None,
          model_name: Optional[str] = None, device: str = "auto", verbose: bool = True, cors_origins=()) -> None:
    """Load a checkpoint folder (plain or LoRA run) and serve it until Ctrl-C."""
    from ..model import load_checkpoint
    from ..train.runtime import pick_device
    model, tokenizer = load_checkpoint(ckpt, device=pick_device(device))
    api_key = resolve_api_key(api_key)
    name = model_name or "minimind"
    server = make_server(model, tokenizer, host, port, api_key, name, verbose=verbose, cors_origins=cors_origins)
    h, p = server.server_address[:2]
    print(f"serving {ckpt} as {name!r} on http://{h}:{p}  (chat page: http://{h}:{p}/ , API: http://{h}:{p}/v1)"
          + ("; API key required" if api_key else ""), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: listening on {host} without an API key: anyone who can reach it can use it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def running_server(model, tokenizer, host: str = "127.0.0.1", port: int = 0, **kwargs):
    """Serve in a background thread for a `with` block (port 0: a free port); yields the server with .url and
    .api_base (.url + "/v1"), and stops, closes and joins it on leaving. kwargs go to make_server."""
    server = make_server(model, tokenizer, host=host, port=port, **kwargs)
    h, p = server.server_address[:2]
    server.url = f"http://{'[' + h + ']' if ':' in h else h}:{p}"
    server.api_base = server.url + "/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name=f"minimind-serve-{p}")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
