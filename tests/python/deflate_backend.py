"""A WebSocket echo backend built on Python's `websockets`, which negotiates
permessage-deflate when the client offers it. Prints `listening on PORT`.
Used to prove wsgate passes the extension through end to end."""

import asyncio
import json
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    extensions = [e.name for e in ws.protocol.extensions]
    await ws.send(json.dumps({"type": "hello", "backend": "py", "extensions": extensions}))
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(handler, "127.0.0.1", 0, max_size=64 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
