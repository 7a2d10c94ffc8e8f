"""OpenAI-style error bodies, so SDK clients raise their usual exceptions with our message; the one place domain
errors (of the gateway, the tenancy rules and the providers) become HTTP statuses."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from router_ml.serve.gateway.errors import InvalidCall, ModelNotServed, NoCandidates
from router_ml.serve.providers.base import ProviderError
from router_ml.serve.tenancy.admission import OverBudget, RateLimited
from router_ml.serve.tenancy.rules import NotAllowed

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 in the OpenAI error shape, from its
    Content-Length before anything is read, or as soon as a body without one (chunked) grows past it. The
    body is read here (the app reads all of it anyway) and handed on as it came."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _refuse(self, scope, receive, send) -> None:
        message = f"request body: larger than the gateway's limit of {self.limit} bytes"
        await error_response(413, message, param="body")(scope, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        messages, received = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


# Domain error -> HTTP status; each carries the request field at fault in ``param``.
DOMAIN_STATUS = {InvalidCall: 400, NotAllowed: 403, ModelNotServed: 404, NoCandidates: 503}


def install(app) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, headers=exc.headers)

    def domain_handler(status: int):
        async def handler(request: Request, exc):  # async: Starlette runs a plain function in its thread pool
            return error_response(status, str(exc), exc.param)
        return handler

    for kind, status in DOMAIN_STATUS.items():
        app.add_exception_handler(kind, domain_handler(status))

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited):
        return error_response(429, str(exc), headers={"retry-after": str(max(1, round(exc.retry_after)))})

    @app.exception_handler(OverBudget)
    async def over_budget(request: Request, exc: OverBudget):
        return error_response(429, str(exc), param="budget")

    @app.exception_handler(ProviderError)
    async def provider_error(request: Request, exc: ProviderError):
        headers = {"retry-after": str(int(exc.retry_after))} if exc.retry_after else None
        return error_response(exc.status, f"upstream {exc.provider or 'provider'}: {exc.message}", headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown paths, wrong methods
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error_response(400, f"{where or 'body'}: {first['msg']}", param=where or None)
