"""Errors as OpenAI shapes them: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from heredity.errors import HeredityError

_TAG = re.compile(
    r"^(constrained-|function-\w+\[)?(str|int|float|bool|list|dict|literal|none)\b.*$"
)  # union branch names


_ROLES = {"system", "developer", "user", "assistant", "tool"}  # the message union's discriminator tags


def _where(loc) -> str:
    """The request field an error points at: union branch names and message-role tags left out."""
    parts = [str(p) for p in loc[1:]]
    keep = [
        p
        for i, p in enumerate(parts)
        if not _TAG.match(p) and not (p in _ROLES and i and parts[i - 1].isdigit())
    ]
    return ".".join(keep) or "body"


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, code, param).body(), status_code=status)


def install(app) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError):
        return JSONResponse(
            e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 429 else None
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        errs = e.errors()
        extra = next((x for x in errs if x.get("type") == "extra_forbidden"), None)
        if extra is not None:  # a field we do not implement: refused, never silently ignored
            field = _where(extra.get("loc", ()))
            return JSONResponse(
                ApiError(
                    400,
                    f"{field} is not implemented by heredity serve; remove it (docs/guides/server.md "
                    "lists the fields each route implements)",
                    "unsupported_parameter",
                    field,
                ).body(),
                status_code=400,
            )
        first = errs[0] if errs else {}
        where = _where(first.get("loc", ()))
        msg = f"{where}: {first.get('msg', 'invalid request')}"
        body = ApiError(422, msg, "invalid_request_error", where).body()
        body["detail"] = [
            {"loc": list(x.get("loc", ())), "msg": x.get("msg"), "type": x.get("type")} for x in errs
        ]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return JSONResponse(
            ApiError(e.status_code, str(e.detail), "http_error").body(),
            status_code=e.status_code,
            headers=getattr(e, "headers", None),
        )

    @app.exception_handler(HeredityError)
    async def _heredity(_: Request, e: HeredityError):
        from heredity.server.runner import QueueFull

        if isinstance(e, QueueFull):
            return JSONResponse(
                ApiError(429, str(e), "queue_full").body(), status_code=429, headers={"Retry-After": "1"}
            )
        return JSONResponse(ApiError(400, str(e), "invalid_request_error").body(), status_code=400)
