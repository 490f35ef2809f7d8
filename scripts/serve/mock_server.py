#!/usr/bin/env python3
"""A stand-in /api/chat server that exists only to test scripts/serve/kyutai_client.py before
`moshi-ttt serve` can: it is not a model and not a reference for the real server.

    python mock_server.py [--host 127.0.0.1] [--port 0]   # prints "listening on PORT" once ready

Per connection it sends the handshake (one byte 0x00, like Kyutai's Python server), decodes the
client's Ogg/Opus audio, and for every 80 ms frame (1920 samples) it received sends the same frame
back as audio (0x01 + Ogg pages), plus the text piece " hi" (0x02) after every 10th frame.
"""

import argparse
import asyncio

import numpy as np
import sphn
from aiohttp import web

FRAME = 1920


async def chat(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    reader, writer = sphn.OpusStreamReader(24000), sphn.OpusStreamWriter(24000)
    pending = np.zeros(0, np.float32)
    frames = 0
    await ws.send_bytes(b"\x00")
    async for msg in ws:
        if msg.type != web.WSMsgType.BINARY or msg.data[:1] != b"\x01":
            continue
        pending = np.concatenate([pending, reader.append_bytes(msg.data[1:])])
        while len(pending) >= FRAME:
            frame, pending = pending[:FRAME], pending[FRAME:]
            pages = writer.append_pcm(frame)
            if len(pages) > 0:
                await ws.send_bytes(b"\x01" + pages)
            frames += 1
            if frames % 10 == 0:
                await ws.send_bytes(b"\x02 hi")
    return ws


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"listening on {runner.addresses[0][1]}", flush=True)  # with --port 0, the port picked
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="stand-in /api/chat server for testing kyutai_client.py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
