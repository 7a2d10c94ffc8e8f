"""OpenAI-style error bodies, so SDK clients raise their usual exceptions with our message."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from router_ml.serve.providers.base import ProviderError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(ProviderError)
    async def provider_error(request: Request, exc: ProviderError):
        headers = {"retry-after": str(int(exc.retry_after))} if exc.retry_after else None
        return error_response(exc.status, f"upstream {exc.provider or 'provider'}: {exc.message}", headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error_response(400, f"{where or 'body'}: {first['msg']}", param=where or None)
