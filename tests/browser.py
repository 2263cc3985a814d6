"""Open an HTML report in headless Chromium (Debian's ``chromium``) and check it as a reader would.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), so no WebSocket client or browser-driver
package is needed. :func:`inspect_page` loads one page and returns what went wrong on it:
console errors and uncaught exceptions, images that did not load, internal links that lead
nowhere, plus a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

#: Seconds a page may take to load (reports embed several MB of base64 PNG).
LOAD_TIMEOUT_S = 60.0
#: Viewport of the screenshots, CSS pixels; the PNG is scaled by SCREENSHOT_SCALE.
VIEWPORT = (1280, 1600)
SCREENSHOT_SCALE = 0.5


def chromium() -> str | None:
    """The Chromium binary, or None when the package is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What a reader of the page would meet."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    n_images: int = 0
    n_links: int = 0
    title: str = ""
    text: str = ""
    evaluated: dict = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def problems(self) -> list[str]:
        return (
            [f"console: {m}" for m in self.console_errors]
            + [f"image did not load: {m}" for m in self.broken_images]
            + [f"link leads nowhere: {m}" for m in self.broken_links]
        )


class Browser:
    """One headless Chromium process and a DevTools-protocol session over its pipe."""

    def __init__(self, binary: str):
        self._profile = tempfile.mkdtemp(prefix="ketamine-dti-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child must find the protocol pipe at fds 3 (commands) and 4 (replies)
        read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)

        def _pipes_at_3_and_4():
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--allow-file-access-from-files",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=_pipes_at_3_and_4,
        )
        for fd in (to_browser_r, from_browser_w, read_end, write_end):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, timeout=LOAD_TIMEOUT_S, **params):
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, method: str, timeout=LOAD_TIMEOUT_S) -> dict:
        """The first event named ``method`` (already received, or the next to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event.get("method") == method:
                    self._events.remove(event)
                    return event
            self._events.append(self._read_message(deadline))

    def take_events(self) -> list[dict]:
        events, self._events = self._events, []
        return events

    def inspect_page(self, page: Path, expressions: dict[str, str] | None = None) -> PageCheck:
        """Load ``page`` in a new tab and check it; ``expressions`` (name -> JavaScript) are
        evaluated after the load and returned by value in ``PageCheck.evaluated``."""
        page = Path(page).resolve()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=VIEWPORT[0],
                height=VIEWPORT[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            self.send("Page.navigate", session, url=page.as_uri())
            self.wait_for("Page.loadEventFired")
            check = PageCheck(url=page.as_uri())

            def evaluate(expression: str):
                result = self.send(
                    "Runtime.evaluate",
                    session,
                    expression=expression,
                    returnByValue=True,
                    awaitPromise=True,
                )
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
                return result["result"].get("value")

            # every image decoded (decode() also waits for images still loading)
            images = evaluate(
                "Promise.all([...document.images].map(i => i.decode().then(() => null,"
                " () => i.alt || i.src.slice(0, 80))))"
            )
            check.n_images = len(images)
            check.broken_images = [name for name in images if name is not None]
            check.broken_images += [
                name
                for name, width in evaluate(
                    "[...document.images].map(i => [i.alt || i.src.slice(0, 80), i.naturalWidth])"
                )
                if width == 0 and name not in check.broken_images
            ]
            links = evaluate(
                "[...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))"
            )
            ids = set(evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)"))
            check.n_links = len(links)
            check.broken_links = [link for link in links if not _resolves(link, page, ids)]
            check.title = evaluate("document.title")
            check.text = evaluate("document.body.innerText")
            height = evaluate("document.documentElement.scrollHeight")
            shot = self.send(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={
                    "x": 0,
                    "y": 0,
                    "width": VIEWPORT[0],
                    "height": min(height, VIEWPORT[1]),
                    "scale": SCREENSHOT_SCALE,
                },
            )
            check.screenshot = base64.b64decode(shot["data"])
            # after the screenshot: an expression may change the page (a click)
            check.evaluated = {name: evaluate(js) for name, js in (expressions or {}).items()}
            for event in self.take_events():
                check.console_errors += _error_text(event)
            return check
        finally:
            self.send("Target.closeTarget", targetId=target)


def _error_text(event: dict) -> list[str]:
    """The console errors, uncaught exceptions and failed loads a DevTools event reports."""
    params = event.get("params", {})
    method = event.get("method")
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return [details.get("exception", {}).get("description") or details.get("text", "")]
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return [" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])]
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return [f"{entry.get('text', '')} {entry.get('url', '')}".strip()]
    return []


def _resolves(link: str, page: Path, ids: set[str]) -> bool:
    """An internal link resolves: ``#x`` names an element of the page, a relative path an
    existing file (and its fragment, for another page, is not checked). Other schemes
    (http, mailto) are external and not followed."""
    parsed = urlparse(link)
    if parsed.scheme and parsed.scheme != "file":
        return True
    if not parsed.path:
        return unquote(parsed.fragment) in ids if parsed.fragment else True
    target = Path(unquote(parsed.path))
    target = target if target.is_absolute() else page.parent / target
    return target.exists()
