"""OpenAI's official SDKs against chorus in front of a FastAPI backend
(../common/backend.py): the Python SDK here, synchronous and asynchronous,
over HTTP/1.1 (the plain gateway) and over HTTP/2 with TLS (the other one);
then the Node SDK (check.mjs) against both gateways. Both also stream from
`chorus demo` (the built-in mock behind the gateway), as the README says
they do.

    python check.py CHORUS_BINARY     (tests/sdk/run.sh sets it all up)

Every scenario asserts what reached the backend, not only what the SDK saw.
Prints a line per check; exits 1 if any failed.
"""

import asyncio
import os
import subprocess
import sys

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from harness import Checks, Stack, free_port, get_json, until  # noqa: E402

STREAMED = "".join(f"tok{i} " for i in range(15))


def ask(tag, **extra):
    """A chat request's arguments; requests with the same tag are identical."""
    return {"model": "m", "messages": [{"role": "user", "content": tag}], "max_tokens": 15, **extra}


def clients(gateway, cert, http2):
    """A synchronous and an asynchronous client of `gateway`."""
    base = gateway.url + "/v1"
    options = dict(http1=not http2, http2=http2, verify=cert if gateway.name == "tls" else True)
    return (
        openai.OpenAI(base_url=base, api_key="sk-check",
                      http_client=openai.DefaultHttpx2Client(**options)),
        openai.AsyncOpenAI(base_url=base, api_key="sk-check",
                           http_client=openai.DefaultAsyncHttpx2Client(**options)),
    )


def text_of(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def error_of(request):
    """What the SDK raised for `request`, or None."""
    try:
        await request
    except openai.OpenAIError as error:
        return error
    return None


async def streamed(client, args):
    """One streamed completion read to its end: (text, finish reason, role, HTTP version)."""
    raw = await client.chat.completions.with_raw_response.create(**args, stream=True)
    chunks = [chunk async for chunk in raw.parse()]
    finish = chunks[-1].choices[0].finish_reason if chunks and chunks[-1].choices else None
    return text_of(chunks), finish, raw.headers.get("x-chorus-role"), raw.http_response.http_version


async def scenarios(stack, gateway, http2, checks):
    version = "HTTP/2" if http2 else "HTTP/1.1"
    check = lambda name, ok, detail: checks.check(f"python {version}: {name}", ok, detail)
    stats = stack.stats
    sync, client = clients(gateway, stack.cert, http2)
    tag = f"python {gateway.name} {version}"

    before = stats()["chats"]
    raw = sync.chat.completions.with_raw_response.create(**ask(tag + " one"), stream=True)
    chunks = list(raw.parse())
    check(
        "a streamed completion arrives whole, event by event",
        text_of(chunks) == STREAMED and chunks[-1].choices[0].finish_reason == "stop"
        and raw.http_response.http_version == version
        and raw.headers.get("x-accel-buffering") == "no" and stats()["chats"] - before == 1,
        f"{len(chunks)} chunks over {raw.http_response.http_version}, "
        f"role {raw.headers.get('x-chorus-role')}",
    )

    before = stats()["chats"]
    answers = await asyncio.gather(*(streamed(client, ask(tag + " triple")) for _ in range(3)))
    chats = stats()["chats"] - before
    check(
        "three identical streams reach the backend once",
        chats == 1 and {a[:2] for a in answers} == {(STREAMED, "stop")}
        and sorted(a[2] for a in answers) == ["follower", "follower", "leader"],
        f"{chats} upstream requests, roles {sorted(a[2] for a in answers)}",
    )

    # One that joins after the first has read four events.
    before = stats()["chats"]
    first = await client.chat.completions.create(**ask(tag + " late"), stream=True)
    early = [await first.__anext__() for _ in range(4)]
    late = await streamed(client, ask(tag + " late"))
    led = text_of(early + [chunk async for chunk in first])
    chats = stats()["chats"] - before
    check(
        "a late joiner gets what it missed, then the rest",
        chats == 1 and led == late[0] == STREAMED and late[2] == "follower",
        f"{chats} upstream requests, the late one a {late[2]}",
    )

    before = stats()["chats"]
    whole = await asyncio.gather(*(client.chat.completions.create(**ask(tag + " whole")) for _ in range(3)))
    chats = stats()["chats"] - before
    contents = {w.choices[0].message.content for w in whole}
    check(
        "three identical completions reach the backend once",
        chats == 1 and contents == {"hi " * 15} and whole[0].usage.total_tokens == 20,
        f"{chats} upstream requests, {len(contents)} distinct answers",
    )

    # httpx2 over HTTP/2 does not reset a stream it stops reading (as
    # httpcore: encode/httpcore#943), so there the gateway learns of the close
    # only when the connection goes: the client is closed too.
    closing, aclosing = clients(gateway, stack.cert, http2)
    then = " and its client" if http2 else ""
    cancelled = stats()["chats_cancelled"]
    stream = closing.chat.completions.create(**ask(tag + " close", max_tokens=200), stream=True)
    for _, _ in zip(range(3), stream):
        pass
    stream.close()
    if http2:
        closing.close()
    stopped = await until(lambda: stats()["chats_cancelled"] > cancelled)
    check(f"closing a stream{then} stops the backend", stopped,
          f"cancelled {stats()['chats_cancelled'] - cancelled}")

    cancelled = stats()["chats_cancelled"]
    stream = await aclosing.chat.completions.create(**ask(tag + " aclose", max_tokens=200), stream=True)
    async for _ in stream:
        break
    await stream.close()
    if http2:
        await aclosing.close()
    stopped = await until(lambda: stats()["chats_cancelled"] > cancelled)
    check(f"closing an async stream{then} stops the backend", stopped,
          f"cancelled {stats()['chats_cancelled'] - cancelled}")
    closing.close()
    await aclosing.close()

    # The SDK retries a 429 twice: chorus never keeps an error for later.
    before = stats()["chats"]
    error = await error_of(client.chat.completions.create(**ask(tag + " limited", extra_body={"fail": 429})))
    chats = stats()["chats"] - before
    check(
        "a 429 reaches the SDK, and each of its retries the backend",
        isinstance(error, openai.RateLimitError) and error.message.startswith("Error code: 429")
        and error.type == "requested" and chats == 3,
        f"{type(error).__name__}, {chats} upstream requests",
    )

    # chorus's own errors are JSON the SDK reads.
    before = stats()["chats"]
    huge = [{"role": "user", "content": "x" * (1 << 20)}]
    error = await error_of(client.chat.completions.create(model="m", messages=huge))
    chats = stats()["chats"] - before
    check(
        "a body over the limit gets 413 with a JSON error",
        isinstance(error, openai.APIStatusError) and error.status_code == 413 and error.type == "body_too_large"
        and chats == 0,
        f"{type(error).__name__} {getattr(error, 'status_code', None)} "
        f"{getattr(error, 'type', None)}, {chats} upstream requests",
    )

    chunks, failure = [], None
    try:
        for chunk in sync.chat.completions.create(**ask(tag + " break", extra_body={"break_after": 3}),
                                                  stream=True):
            chunks.append(chunk)
    except Exception as e:  # the SDK raises what its HTTP client raised
        failure = e
    check(
        "a stream broken upstream ends in an error, not a clean end",
        failure is not None and len(chunks) == 3,
        f"{len(chunks)} chunks, then {type(failure).__name__}: {failure}",
    )

    sync.close()
    await client.close()
    check("nothing is left in flight", await until(gateway.idle), "flights and subscribers active at 0")


async def both_versions(stack, checks):
    """HTTP/1.1 and HTTP/2 clients of the TLS gateway share one flight."""
    gateway = stack.gateways[1]
    h1, h2 = clients(gateway, stack.cert, False)[1], clients(gateway, stack.cert, True)[1]
    before = stack.stats()["chats"]
    answers = await asyncio.gather(
        *(streamed(c, ask("python versions")) for c in (h1, h2, h1, h2))
    )
    chats = stack.stats()["chats"] - before
    checks.check(
        "python: clients of HTTP/1.1 and HTTP/2 share one flight",
        chats == 1 and {a[:2] for a in answers} == {(STREAMED, "stop")}
        and [a[3] for a in answers] == ["HTTP/1.1", "HTTP/2"] * 2,
        f"{chats} upstream requests, {[a[3] for a in answers]}",
    )
    await h1.close()
    await h2.close()


class Demo:
    """`chorus demo` on free ports: `url` the gateway, `stats` the mock's counters."""

    def __init__(self, chorus):
        self.chorus = os.path.abspath(chorus)

    def __enter__(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [self.chorus, "demo", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{free_port()}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        # The banner names the mock's /stats once the gateway listens.
        for line in self.process.stdout:
            if line.strip().startswith("upstream"):
                self.stats_url = line.split()[1]
                return self
        self.process.kill()
        sys.exit("chorus demo ended before its banner")

    def stats(self):
        return get_json(self.stats_url)

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(timeout=30)


async def demo(chorus, checks):
    """The Python SDK against `chorus demo`, as a first-time user tries it."""
    check = lambda name, ok, detail: checks.check(f"python demo: {name}", ok, detail)
    with Demo(chorus) as running:
        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="sk-demo")
        models = await client.models.list()
        check("the mock's models are listed", [m.id for m in models.data] == ["mock"],
              [m.id for m in models.data])
        before = running.stats()["requests"]
        question = {"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}
        answers = await asyncio.gather(*(streamed(client, question) for _ in range(3)))
        requests = running.stats()["requests"] - before
        check(
            "three identical streams reach the mock once",
            requests == 1 and len({a[0] for a in answers}) == 1 and answers[0][0]
            and answers[0][1] == "stop",
            f"{requests} upstream requests, {answers[0][0][:40]!r}",
        )
        whole = await client.chat.completions.create(**question)
        check("a whole completion", bool(whole.choices[0].message.content),
              repr(whole.choices[0].message.content[:40]))
        await client.close()
        node = subprocess.run(["node", os.path.join(HERE, "check.mjs"), "demo"],
                              env={**os.environ, "DEMO": running.url, "DEMO_STATS": running.stats_url})
        if node.returncode != 0:
            checks.failures.append(f"node demo (exit {node.returncode})")


def main():
    checks = Checks()
    asyncio.run(demo(sys.argv[1], checks))
    with Stack(sys.argv[1]) as stack:
        plain, tls = stack.gateways
        asyncio.run(scenarios(stack, plain, False, checks))
        asyncio.run(scenarios(stack, tls, True, checks))
        asyncio.run(both_versions(stack, checks))
        node = subprocess.run(
            ["node", os.path.join(HERE, "check.mjs")],
            env={**os.environ, "PLAIN": plain.url, "TLS": tls.url, "BACKEND": stack.backend,
                 "PLAIN_ADMIN": plain.admin, "TLS_ADMIN": tls.admin,
                 "NODE_EXTRA_CA_CERTS": stack.cert},
        )
        if node.returncode != 0:
            checks.failures.append(f"node (exit {node.returncode})")
        stack.failed = bool(checks.failures)
    checks.finish("SDK check")


if __name__ == "__main__":
    main()
