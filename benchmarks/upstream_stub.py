"""A loopback OpenAI-compatible upstream with a fixed delay, for the gateway latency benchmark.

Run: python benchmarks/upstream_stub.py PORT DELAY_MS
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DELAY = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.05


async def completions(request: Request) -> JSONResponse:
    body = await request.json()
    await asyncio.sleep(DELAY)
    return JSONResponse({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short stub answer."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})


app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
