"""Headless Chromium driven over the Chrome DevTools protocol: just enough to open a page, run JavaScript in
it and wait for conditions. Shared by the chat page's test (test_serve.py) and the book's (test_book.py).

    with chromium(tmp_path) as page:      # a DevTools connection to a blank tab
        page.goto("file:///.../index.html")
        page.js("document.title")
"""
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NO_CHROMIUM = ("chromium is not installed (apt-get install chromium); .ci/run installs it so CI runs this test")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


class DevTools:
    """One page's DevTools connection: call protocol methods, evaluate JavaScript, wait for a condition.
    Events the browser sends (e.g. Runtime.exceptionThrown, once Runtime.enable is called) are kept in
    .events."""

    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.n = 0
        self.events: list[dict] = []

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def wait(self, expression, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed false for {timeout}s")

    def goto(self, url, timeout=30):
        """Navigate and wait until the new document has loaded (images included)."""
        self.call("Page.navigate", url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout)

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript exceptions reported since Runtime.enable (or the last clear_events)."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description")
                or e["params"]["exceptionDetails"].get("text", "")
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def clear_events(self):
        self.events.clear()

    def screenshot(self, path):
        import base64
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))


@contextlib.contextmanager
def chromium(tmp_path, width=1280, height=900):
    """A headless Chromium with a fresh profile under tmp_path; yields a DevTools connection to its tab and
    closes the browser at the end."""
    pytest.importorskip("websocket", reason="websocket-client (a jupyter dependency) is needed to drive Chromium")
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    profile = tmp_path / "chromium-profile"
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = None
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < end:
            assert browser.poll() is None, "chromium exited at start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        yield dt
    finally:
        if dt is not None:
            dt.ws.close()
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
