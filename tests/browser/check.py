"""A real browser (Chromium, driven by Playwright) against chorus in front of
a FastAPI backend (../common/backend.py): what pages do with an LLM stream, and a
WebSocket, over HTTP/1.1 (plain) and over HTTP/2 (TLS, a certificate made
by openssl; the WebSocket is then a stream of the page's HTTP/2 connection,
RFC 8441).

    python check.py CHORUS_BINARY     (tests/browser/run.sh sets it all up)

Every scenario asserts what reached the backend, not only what the page saw.
Prints a line per check; exits 1 if any failed.
"""

import asyncio
import os
import sys
import time

from playwright.async_api import async_playwright

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import Checks, Stack, until  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# One chat request, read to its end with a stream reader, as chat UIs do.
CHAT = """async ({url, tag}) => {
  const body = JSON.stringify({model: "m", stream: true, max_tokens: 15,
    messages: [{role: "user", content: "hello " + tag}]});
  const r = await fetch(url + "/v1/chat/completions",
    {method: "POST", headers: {"Content-Type": "application/json"}, body});
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let text = "", reads = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    window.reads = ++reads;
    text += decoder.decode(value, {stream: true});
  }
  const h = (name) => r.headers.get(name);
  return {status: r.status, role: h("x-chorus-role"), type: h("content-type"),
          cacheControl: h("cache-control"), accelBuffering: h("x-accel-buffering"),
          text, reads};
}"""
TRIPLE = "async (args) => Promise.all([0, 1, 2].map(() => (" + CHAT + ")(args)))"

# Reads three chunks, then the user navigates away (the fetch is aborted).
ABORT = """async ({url, tag}) => {
  const controller = new AbortController();
  const body = JSON.stringify({model: "m", stream: true, max_tokens: 200,
    messages: [{role: "user", content: "abort " + tag}]});
  const r = await fetch(url + "/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json"}, body, signal: controller.signal});
  const reader = r.body.getReader();
  for (let i = 0; i < 3; i++) await reader.read();
  controller.abort();
}"""

# An EventSource until it has `want` messages; it reconnects by itself when
# the stream ends, sending the last id it saw.
# A WebSocket through the gateway: three messages, their echoes, a close.
SOCKET = """async ({url}) => new Promise((resolve, reject) => {
  const socket = new WebSocket(url.replace(/^http/, "ws") + "/ws"), got = [];
  socket.onopen = () => ["one", "two", "three"].forEach((m) => socket.send(m));
  socket.onmessage = (e) => { got.push(e.data); if (got.length == 3) socket.close(1000); };
  socket.onclose = (e) => resolve({got, code: e.code, clean: e.wasClean});
  socket.onerror = () => reject(new Error("WebSocket error"));
})"""

FEED = """async ({url, count, want}) => new Promise((resolve) => {
  const source = new EventSource(url + "/feed?count=" + count), got = [];
  source.onmessage = (e) => {
    got.push(e.lastEventId);
    if (got.length == want) { source.close(); resolve(got); }
  };
})"""


async def scenarios(context, stack, gw, protocol, checks):
    """Every check against one gateway, whose pages must reach it by `protocol`."""
    stats, backend, gateway = stack.stats, stack.backend, gw.url
    check = lambda name, ok, detail: checks.check(f"{protocol}: {name}", ok, detail)

    page = await context.new_page()
    await page.goto(gateway + "/page")

    before = stats()["chats"]
    answers = await page.evaluate(TRIPLE, {"url": gateway, "tag": "triple"})
    chats = stats()["chats"] - before
    used = await page.evaluate(
        "() => performance.getEntriesByType('resource').map((e) => e.nextHopProtocol)"
    )
    check("the page speaks " + protocol, set(used) == {protocol}, used)
    check("triple click reaches the backend once", chats == 1, f"{chats} upstream requests")
    texts = {a["text"] for a in answers}
    check(
        "every click gets the whole, identical stream",
        [a["status"] for a in answers] == [200] * 3
        and len(texts) == 1
        and "tok14" in answers[0]["text"]
        and "[DONE]" in answers[0]["text"],
        f"statuses {[a['status'] for a in answers]}, {len(texts)} distinct bodies",
    )
    roles = sorted(a["role"] for a in answers)
    check("one leader, two followers", roles == ["follower", "follower", "leader"], roles)
    check(
        "event streams are marked unbuffered",
        all(a["accelBuffering"] == "no" and a["cacheControl"] == "no-cache" for a in answers),
        f"{answers[0]['type']}, x-accel-buffering {answers[0]['accelBuffering']}",
    )
    # 16 events 50 ms apart: a buffered answer arrives in one or two reads.
    reads = [a["reads"] for a in answers]
    check("chunks arrive as they are sent", min(reads) >= 8, f"reads per client {reads}")

    tabs = [await context.new_page() for _ in range(3)]
    for tab in tabs:
        await tab.goto(gateway + "/page")
    before = stats()["chats"]
    answers = await asyncio.gather(
        *(tab.evaluate(CHAT, {"url": gateway, "tag": "tabs"}) for tab in tabs)
    )
    chats = stats()["chats"] - before
    same = len({a["text"] for a in answers}) == 1
    check("three tabs share one upstream request", chats == 1 and same, f"{chats} upstream requests")

    # A tab that sends the same request once the first has read four chunks.
    first, late = tabs[:2]
    await first.evaluate("() => { window.reads = 0; }")
    before = stats()["chats"]
    leading = asyncio.ensure_future(first.evaluate(CHAT, {"url": gateway, "tag": "late"}))
    deadline = time.monotonic() + 10
    while await first.evaluate("() => window.reads || 0") < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    joined = await late.evaluate(CHAT, {"url": gateway, "tag": "late"})
    led = await leading
    chats = stats()["chats"] - before
    check(
        "a late tab gets what it missed, then the rest",
        chats == 1 and joined["text"] == led["text"] and "[DONE]" in led["text"]
        and (led["role"], joined["role"]) == ("leader", "follower"),
        f"{chats} upstream requests, reads {led['reads']} and {joined['reads']}",
    )

    cancelled = stats()["chats_cancelled"]
    await page.evaluate(ABORT, {"url": gateway, "tag": "abort"})
    stopped = await until(lambda: stats()["chats_cancelled"] > cancelled)
    check("an aborted fetch stops the backend", stopped, f"cancelled {stats()['chats_cancelled'] - cancelled}")

    cancelled = stats()["feeds_cancelled"]
    ids = await page.evaluate(FEED, {"url": gateway, "count": 200, "want": 5})
    check("EventSource gets every event in order", ids == ["1", "2", "3", "4", "5"], ids)
    stopped = await until(lambda: stats()["feeds_cancelled"] > cancelled)
    check("closing an EventSource stops the backend", stopped, f"cancelled {stats()['feeds_cancelled'] - cancelled}")

    before = len(stats()["last_event_ids"])
    ids = await page.evaluate(FEED, {"url": gateway, "count": 3, "want": 6})
    seen = stats()["last_event_ids"][before:]
    check(
        "a reconnecting EventSource resumes after its last event",
        ids == ["1", "2", "3", "4", "5", "6"] and seen[:2] == [None, "3"],
        f"ids {ids}, Last-Event-ID at the backend {seen}",
    )

    # Pages served by the backend itself are of other origins than the
    # gateway's: their JSON POSTs are preflighted, and the answers carry
    # Access-Control-Allow-Origin for the page's origin only.
    port = backend.rsplit(":", 1)[1]
    pages = {}
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        pages[origin] = await context.new_page()
        await pages[origin].goto(origin + "/page")
    first = pages[f"http://127.0.0.1:{port}"]
    before = stats()["chats"]
    try:
        answers = await first.evaluate(TRIPLE, {"url": gateway, "tag": "cross"})
        ok = [a["status"] for a in answers] == [200] * 3 and len({a["text"] for a in answers}) == 1
        detail = f"roles {sorted(a['role'] for a in answers)}"
    except Exception as error:
        ok, detail = False, str(error).splitlines()[0]
    chats = stats()["chats"] - before
    check("a cross-origin triple click shares one request", ok and chats == 1, f"{detail}, {chats} upstream requests")

    before = stats()["chats"]
    results = []
    for outcome in await asyncio.gather(
        *(p.evaluate(CHAT, {"url": gateway, "tag": "origins"}) for p in pages.values()),
        return_exceptions=True,
    ):
        results.append(outcome["status"] if isinstance(outcome, dict) else str(outcome).splitlines()[0])
    chats = stats()["chats"] - before
    check(
        "pages of two origins each get an answer they may read",
        results == [200, 200] and chats == 2,
        f"{results}, {chats} upstream requests",
    )

    before, closed = stats()["sockets"], stats()["sockets_closed"]
    try:
        talk = await page.evaluate(SOCKET, {"url": gateway})
    except Exception as error:
        talk = {"got": str(error).splitlines()[0], "code": None, "clean": False}
    ended = await until(lambda: stats()["sockets_closed"] > closed)
    # The gateway's access log names the handshake: HTTP/1.1's GET, or
    # HTTP/2's extended CONNECT.
    method = "CONNECT" if protocol == "h2" else "GET"
    with open(gw.log) as lines:
        handshakes = [l for l in lines if 'path="/ws"' in l and "role=" in l]
    check(
        "a WebSocket is tunnelled both ways and its close reaches the backend",
        talk["got"] == ["echo: one", "echo: two", "echo: three"]
        and talk["code"] == 1000 and talk["clean"]
        and stats()["sockets"] - before == 1 and ended
        and len(handshakes) == 1 and f"method={method} " in handshakes[0],
        f"{talk}, backend closed {stats()['sockets_closed'] - closed}, "
        f"handshake {[l.split('method=')[-1].split(' role')[0] for l in handshakes]}",
    )

    check("nothing is left in flight", await until(gw.idle), "flights and subscribers active at 0")


async def browse(stack, checks):
    """Runs the scenarios against the plain gateway (HTTP/1.1) and the TLS one (h2)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"]
        )
        for gateway, protocol in zip(stack.gateways, ("http/1.1", "h2")):
            # The TLS gateway's certificate is self-signed.
            context = await browser.new_context(ignore_https_errors=True)
            await scenarios(context, stack, gateway, protocol, checks)
            await context.close()
        await browser.close()


def main():
    checks = Checks()
    with Stack(sys.argv[1]) as stack:
        asyncio.run(browse(stack, checks))
        stack.failed = bool(checks.failures)
    checks.finish("browser check")


if __name__ == "__main__":
    main()
