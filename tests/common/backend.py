"""The upstream of the browser and SDK checks: a FastAPI app that streams
chat completions as OpenAI's API does (and answers them whole), streams an
EventSource feed over SSE, echoes WebSocket messages, counts what reaches it
and what is cancelled, and answers CORS for two page origins by echoing the
caller's (`Vary: Origin`), as a production backend with an origin list does.

A chat request's body may also ask for trouble: `"fail": STATUS` is answered
with that status and OpenAI's error JSON; `"break_after": N` ends the
connection after N events, without the stream's end.

    uvicorn backend:app --port PORT   (env PAGE_ORIGINS: comma-separated)
"""

import asyncio
import json
import os
import time

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

app = FastAPI()
app.add_middleware(
    CORSMiddleware,
    allow_origins=os.environ.get("PAGE_ORIGINS", "").split(","),
    allow_methods=["*"],
    allow_headers=["*"],
    expose_headers=["x-chorus-role"],
)
stats = {
    "chats": 0,
    "chats_cancelled": 0,
    "feeds": 0,
    "feeds_cancelled": 0,
    "last_event_ids": [],
    "sockets": 0,
    "sockets_closed": 0,
}


@app.get("/page")
async def page():
    return HTMLResponse("<!doctype html><title>chat</title><p>chat</p>")


@app.get("/stats")
async def get_stats():
    return stats


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    stats["chats"] += 1
    tokens = body.get("max_tokens", 15)
    model = body.get("model", "m")
    created = int(time.time())
    if body.get("fail"):
        error = {"message": "asked to fail", "type": "requested", "code": None, "param": None}
        # The SDKs wait as long as retry-after-ms says before a retry.
        headers = {"retry-after-ms": "10"}
        return JSONResponse({"error": error}, status_code=body["fail"], headers=headers)
    if not body.get("stream"):
        await asyncio.sleep(0.3)  # a whole answer takes a while to write
        message = {"role": "assistant", "content": "hi " * tokens}
        return JSONResponse({
            "id": "chatcmpl-whole", "object": "chat.completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens},
        })

    def chunk(delta, finish=None):
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [choice],
        }) + "\n\n"

    async def events():
        try:
            for i in range(tokens):
                if i == body.get("break_after"):
                    # Past the response head, uvicorn closes the connection.
                    raise RuntimeError("asked to break")
                yield chunk({"content": f"tok{i} "})
                await asyncio.sleep(0.05)
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            stats["chats_cancelled"] += 1
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/feed")
async def feed(request: Request, count: int = 200):
    """Numbered events from after `Last-Event-ID`; ends after `count`, so that
    an EventSource reconnects (after 100 ms) with the last id it saw."""
    stats["feeds"] += 1
    last = request.headers.get("last-event-id")
    stats["last_event_ids"].append(last)
    start = int(last or 0)

    async def events():
        try:
            yield "retry: 100\n\n"
            for i in range(start + 1, start + 1 + count):
                yield f"id: {i}\ndata: tick {i}\n\n"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            stats["feeds_cancelled"] += 1
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


@app.websocket("/ws")
async def echo(socket: WebSocket):
    """Sends back every text message, prefixed with "echo: "."""
    stats["sockets"] += 1
    await socket.accept()
    try:
        while True:
            await socket.send_text("echo: " + await socket.receive_text())
    except WebSocketDisconnect:
        stats["sockets_closed"] += 1
