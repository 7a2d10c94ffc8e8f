"""A loopback OpenAI-compatible upstream with a fixed delay, for the gateway latency benchmark.

Run: python benchmarks/upstream_stub.py PORT DELAY_MS

A raw asyncio ``Protocol`` HTTP/1.1 server (stdlib only; uvloop when importable), so that the stub is
never the bottleneck: each request costs a few tens of microseconds of CPU and then waits on a
timer, so it sustains well over the 2,000 req/s that 100 connections at 50 ms can ask of it
(benchmarks/gateway_latency.py checks this: the "direct" rows must read ~50 ms and ~2,000 req/s).

- ``POST <any path>``: a non-streamed chat completion for the body's ``model``, ``DELAY_MS`` after the
  request arrived (keep-alive; ``Connection: close`` honoured; no pipelining needed by any client here).
- ``GET /stats``: ``{"connections": accepted TCP connections, "requests": answered POSTs}``, which shows
  whether a client reuses its connections (a pool that churns connections opens many more).
- ``GET <other path>``: ``{"ok": true}`` (readiness).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

DELAY = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.05
STATS = {"connections": 0, "requests": 0}
_MAX_HEADER = 64 * 1024


def _response(body: bytes, status: str = "200 OK", close: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{'connection: close' if close else 'connection: keep-alive'}\r\n\r\n")
    return head.encode("latin-1") + body


def _completion(body: bytes, close: bool) -> bytes:
    try:
        model = json.loads(body).get("model", "stub")
    except (ValueError, AttributeError):
        return _response(b'{"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}}',
                         "400 Bad Request", close)
    payload = {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short stub answer."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
    return _response(json.dumps(payload).encode(), close=close)


class StubProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        STATS["connections"] += 1
        self.transport = transport
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEADER:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, path = (head[0].split(" ") + ["", ""])[:2]
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                return  # body not complete yet
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            if method == "POST":
                STATS["requests"] += 1
                self.loop.call_later(DELAY, self._send, _completion(body, close), close)
            elif path == "/stats":
                self._send(_response(json.dumps(STATS).encode(), close=close), close)
            else:
                self._send(_response(b'{"ok": true}', close=close), close)

    def _send(self, response: bytes, close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if close:
            self.transport.close()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(StubProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop  # optional: the stub is fast enough on the stdlib loop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
