"""The upstream of the browser check: a FastAPI app that streams chat
completions and an EventSource feed over SSE, echoes WebSocket messages,
counts what reaches it and what is cancelled, and answers CORS for two page
origins by echoing the caller's (`Vary: Origin`), as a production backend
with an origin list does.

    uvicorn backend:app --port PORT   (env PAGE_ORIGINS: comma-separated)
"""

import asyncio
import json
import os

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
    if not body.get("stream"):
        return JSONResponse({"choices": [{"message": {"content": "hi " * tokens}}]})

    async def events():
        try:
            for i in range(tokens):
                delta = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
                yield f"data: {json.dumps(delta)}\n\n"
                await asyncio.sleep(0.05)
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
