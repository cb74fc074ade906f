"""A TCP proxy on loopback that holds what the client sends for a fixed delay: a network's latency, without a network.

Each chunk a client sends reaches the server ``delay_s`` later, in order; answers come back at once. One
HTTP request (or one SQL round trip) so waits ``delay_s`` more, while many connections wait side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    due: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(65536):
            await due.put((time.monotonic() + delay_s, data))
        await due.put((0.0, b""))

    async def send() -> None:
        while True:
            at, data = await due.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            writer.write(data)
            await writer.drain()

    with contextlib.suppress(ConnectionError, OSError):
        await asyncio.gather(read(), send())
    with contextlib.suppress(Exception):
        writer.close()


@contextlib.contextmanager
def delay_proxy(target_host: str, target_port: int, delay_s: float) -> Iterator[int]:
    """A proxy to ``target_host:target_port`` on a free loopback port (yielded), in a thread of its own."""
    loop = asyncio.new_event_loop()
    started: list = []

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, OSError):  # cancelled: the proxy stops
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
            await asyncio.gather(_pipe(client_r, server_w, delay_s), _pipe(server_r, client_w, 0.0))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
        started.append(server)

    thread = threading.Thread(target=loop.run_forever, name="delay-proxy", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    async def stop() -> None:  # the open connections' tasks end before the loop does
        started[0].close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        yield started[0].sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
