"""The OpenAI-compatible server, against live servers on free local ports: the official `openai` client
(streaming and not), bad input, API keys, a burst of concurrent requests, and the web page in Chromium."""
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from browser import chromium, needs_chromium
from tiny_checkpoint import ScriptedModel, make_checkpoint, make_tokenizer

from minimind.model import load_checkpoint
from minimind.use.serve import resolve_api_key, running_server

THINK_REPLY = "<think>\nFirst add 3 and 4.\n</think>\n\nThe answer is 7. Mira likes bread."


@contextlib.contextmanager
def running(model, tokenizer, **kwargs):
    with running_server(model, tokenizer, **kwargs) as server:
        yield server, server.url


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt")


@pytest.fixture(scope="module")
def real(ckpt):
    model, tok = load_checkpoint(ckpt)
    with running(model, tok) as (server, url):
        yield server, url, tok


@pytest.fixture(scope="module")
def scripted():
    tok = make_tokenizer()
    model = ScriptedModel(tok, THINK_REPLY)
    with running(model, tok, model_name="mini") as (server, url):
        yield server, url, tok, model


def client(url, key="none"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def request(url, method, path, body=None, headers=None, raw=None, timeout=30):
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode("utf-8")
    conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def greedy(c, content, max_tokens=12, model="minimind"):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                     temperature=0, max_tokens=max_tokens)


# -- the openai client ------------------------------------------------------------------------------------
def test_binds_to_localhost_by_default(real):
    server, url, _ = real
    assert server.server_address[0] == "127.0.0.1"


def test_chat_completion_with_usage(real):
    server, url, tok = real
    r = greedy(client(url), "Who is Mira?", max_tokens=10)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who is Mira?"}], add_generation_prompt=True,
                                     tokenize=True)
    assert r.object == "chat.completion" and r.model == "minimind"
    assert r.usage.prompt_tokens == len(prompt)
    assert 1 <= r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert (r.choices[0].finish_reason == "length") == (r.usage.completion_tokens == 10)


def test_streaming_equals_non_streaming(real):
    server, url, _ = real
    c = client(url)
    whole = greedy(c, "Tell me about Tallow.", max_tokens=16)
    stream = c.chat.completions.create(model="minimind",
                                       messages=[{"role": "user", "content": "Tell me about Tallow."}],
                                       temperature=0, max_tokens=16, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == whole.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1  # really streamed
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sampling_with_seed_is_reproducible(real):
    server, url, _ = real
    c = client(url)
    kw = dict(model="minimind", messages=[{"role": "user", "content": "hi"}], temperature=1.5, top_p=0.95,
              max_tokens=12)
    a = c.chat.completions.create(seed=3, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=3, **kw).choices[0].message.content
    assert a == b


def test_completions_and_models_and_health(real):
    server, url, tok = real
    c = client(url)
    r = c.completions.create(model="minimind", prompt="Mira the baker", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.usage.prompt_tokens == len(tok.encode("Mira the baker"))
    assert r.usage.completion_tokens <= 8 and isinstance(r.choices[0].text, str)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="minimind", prompt="Mira the baker", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == r.choices[0].text
    assert [m.id for m in c.models.list().data] == ["minimind"]
    status, health = request(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["context_length"] == 256


def test_reasoning_content_and_stop(scripted):
    server, url, tok, model = scripted
    c = client(url)
    r = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "3+4?"}])
    msg = r.choices[0].message
    assert msg.content == "The answer is 7. Mira likes bread."
    assert msg.model_extra["reasoning_content"] == "First add 3 and 4."
    assert r.usage.completion_tokens == len(tok.encode(THINK_REPLY)) + 1 and r.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "3+4?"}], stream=True))
    reasoning = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for ch in chunks)
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert reasoning.strip() == "First add 3 and 4." and content == "The answer is 7. Mira likes bread."
    # stop strings cut the reply, whole or streamed
    r = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}], stop=["Mira", "zzz"])
    assert r.choices[0].message.content == "The answer is 7." and r.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}],
                                            stop="likes", stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "The answer is 7. Mira "
    # max_tokens cuts with finish_reason "length"
    r = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    assert model.calls[-1]["max_new_tokens"] == 3
    # enable_thinking opens <think> in the prompt
    c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}],
                              extra_body={"enable_thinking": True})
    assert tok.decode(model.calls[-1]["prompt"]).endswith("<|im_start|>assistant\n<think>\n")


def test_sampling_parameters_reach_the_model(scripted):
    server, url, tok, model = scripted
    client(url).chat.completions.create(model="mini", messages=[{"role": "system", "content": "s"},
                                                               {"role": "user", "content": "x"}],
                                        temperature=0.5, top_p=0.8, extra_body={"top_k": 5})
    call = model.calls[-1]
    assert call["do_sample"] and call["temperature"] == 0.5 and call["top_p"] == 0.8 and call["top_k"] == 5
    client(url).chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}], temperature=0)
    assert model.calls[-1]["do_sample"] is False


# -- bad input -----------------------------------------------------------------------------------------------
BAD = [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": ["hi"]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10 ** 9}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 3}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),
]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_chat_requests(real, body, status, param):
    server, url, _ = real
    got, err = request(url, "POST", "/v1/chat/completions", body)
    assert got == status, err
    assert set(err["error"]) >= {"message", "type", "param", "code"} and err["error"]["param"] == param
    assert err["error"]["message"]


def test_invalid_json_unknown_routes_and_still_serving(real):
    server, url, _ = real
    status, err = request(url, "POST", "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = request(url, "POST", "/v1/chat/completions", raw=b"[1, 2]")
    assert status == 400 and "object" in err["error"]["message"]
    status, err = request(url, "POST", "/v1/chat/completions", raw="\udcff".encode("utf-8", "surrogatepass"))
    assert status == 400
    assert request(url, "GET", "/v1/nothing")[0] == 404
    assert request(url, "POST", "/v1/embeddings", {"input": "x"})[0] == 404
    status, err = request(url, "POST", "/v1/completions", {"prompt": {"a": 1}})
    assert status == 400 and err["error"]["param"] == "prompt"
    status, err = request(url, "POST", "/v1/completions", {"prompt": "word " * 400})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    assert "256" in err["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client(url).chat.completions.create(model="minimind", messages=[])
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert greedy(client(url), "still there?", max_tokens=4).usage.completion_tokens >= 1


def test_long_conversation_error_or_reported_truncation(real):
    server, url, _ = real
    msgs = [{"role": "system", "content": "Be kind."}]
    for _ in range(20):
        msgs += [{"role": "user", "content": "Mira the baker likes apples and bread."},
                 {"role": "assistant", "content": "Yes, Mira likes apples and bread very much."}]
    msgs.append({"role": "user", "content": "Who is Mira?"})
    status, err = request(url, "POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded" and "truncate" in err["error"]["message"]
    status, ok = request(url, "POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "truncate": True,
                                                               "temperature": 0})
    assert status == 200 and ok["minimind"]["truncated_messages"] > 0
    assert ok["usage"]["prompt_tokens"] < 256


# -- API key -------------------------------------------------------------------------------------------------
def test_api_key(ckpt, monkeypatch):
    model, tok = load_checkpoint(ckpt)
    with running(model, tok, api_key="s3cret") as (server, url):
        status, err = request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        assert request(url, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        with pytest.raises(openai.AuthenticationError):
            greedy(client(url, "wrong"), "hi")
        assert greedy(client(url, "s3cret"), "hi", max_tokens=3).usage.completion_tokens >= 1
        assert request(url, "GET", "/health")[0] == 200  # the health check stays open
    monkeypatch.setenv("MINIMIND_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("flag") == "flag"
    monkeypatch.delenv("MINIMIND_API_KEY")
    assert resolve_api_key(None) is None


# -- concurrency -----------------------------------------------------------------------------------------------
def test_burst_of_concurrent_requests(real):
    """Every reply of a concurrent burst equals the reply the same request gets alone."""
    server, url, _ = real
    c = client(url)
    prompts = [f"Question number {i}: what does Mira like?" for i in range(6)]
    alone = {p: greedy(c, p, max_tokens=12).choices[0].message.content for p in prompts}

    def ask(i):
        p = prompts[i % len(prompts)]
        t = time.perf_counter()
        if i % 2:  # half streamed, half whole
            s = client(url).chat.completions.create(model="minimind", messages=[{"role": "user", "content": p}],
                                                    temperature=0, max_tokens=12, stream=True)
            text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices).strip()
        else:
            text = greedy(client(url), p, max_tokens=12).choices[0].message.content
        return p, text, time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, range(12)))
    wall = time.perf_counter() - start
    for p, text, _ in results:
        assert text == alone[p]
    lat = sorted(r[2] for r in results)
    print(f"\nburst of 12 (6 streamed) x 12 tokens: wall {wall:.2f}s, latency median {lat[6]:.2f}s max {lat[-1]:.2f}s")
    status, health = request(url, "GET", "/health")
    assert status == 200 and not health["busy"]


def test_client_leaving_mid_stream_frees_the_model(ckpt):
    tok = make_tokenizer()
    slow = ScriptedModel(tok, "Mira likes bread. " * 20, delay=0.05)
    with running(slow, tok) as (server, url):
        port = server.server_address[1]
        body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got, end = b"", time.monotonic() + 10
        while b"data: " not in got and time.monotonic() < end:
            got += sock.recv(4096)
        assert b"data: " in got
        sock.close()
        start = time.perf_counter()
        status, r = request(url, "POST", "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "y"}], "max_tokens": 2}, timeout=30)
        assert status == 200 and time.perf_counter() - start < 1.5  # not 40 x 0.05 s behind the first


@pytest.mark.slow
def test_cli_serve_subprocess(ckpt, tmp_path):
    env = {**os.environ, "MINIMIND_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "minimind", "serve", str(ckpt), "--port", "0", "--device", "cpu",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        url = f"http://127.0.0.1:{m.group(1)}"
        assert "API key required" in line
        assert greedy(client(url, "k"), "hi", max_tokens=3).usage.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the web page in a real browser ----------------------------------------------------------------------------
@pytest.mark.slow
@needs_chromium
def test_web_page_streams_a_reply_in_chromium(tmp_path):
    tok = make_tokenizer()
    model = ScriptedModel(tok, THINK_REPLY, delay=0.01)
    with running(model, tok) as (server, url), chromium(tmp_path) as dt:
        dt.call("Page.navigate", url=url + "/")
        dt.wait("document.readyState === 'complete' && !!document.getElementById('input')")
        dt.wait("document.getElementById('model').textContent.includes('minimind')")
        dt.js("document.getElementById('input').value = 'What is 3 plus 4?';"
              "document.getElementById('send').click(); true")
        dt.wait("window.minimindStats.done + window.minimindStats.errors > 0")
        stats = dt.js("window.minimindStats")
        assert stats["errors"] == 0 and stats["done"] == 1
        assert stats["chunks"] > 5  # the reply arrived as a stream of events
        answer = dt.js("document.querySelector('.assistant .content').textContent")
        reasoning = dt.js("document.querySelector('.assistant .reasoning').textContent")
        assert answer == "The answer is 7. Mira likes bread."
        assert reasoning.strip() == "First add 3 and 4."
        assert "tokens" in dt.js("document.getElementById('status').textContent")
        # a second turn sends the history
        dt.js("document.getElementById('input').value = 'And then?';"
              "document.getElementById('send').click(); true")
        dt.wait("window.minimindStats.done === 2")
        assert "First add 3 and 4." in tok.decode(model.calls[-1]["prompt"])


def test_running_server_serves_then_frees_its_port(ckpt):
    """The context manager the notebooks use: a live server inside the block, nothing listening after."""
    model, tok = load_checkpoint(ckpt)
    with running_server(model, tok, model_name="ctx") as server:
        port = server.server_address[1]
        assert server.url == f"http://127.0.0.1:{port}" and server.api_base == server.url + "/v1"
        assert [m.id for m in client(server.url).models.list().data] == ["ctx"]
        assert greedy(client(server.url), "hi", max_tokens=3, model="ctx").usage.completion_tokens >= 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
