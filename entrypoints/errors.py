"""One mapping from every failure to the contract's JSON error `{"error", "detail"}` and status."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from domain.errors import QueueError

log = logging.getLogger("lineup.http")

# The status of each rule error's code; every other code is a 409 conflict.
ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
    503: "unavailable",
}


def error_body(code: str, detail: str) -> dict[str, str]:
    """Every error answer's JSON body."""
    return {"error": code, "detail": detail}


def error_response(status: int, body: dict[str, str]) -> Response[dict[str, str]]:
    return Response(body, status_code=status, media_type=MediaType.JSON)


def queue_error_answer(exc: QueueError) -> tuple[int, dict[str, str]]:
    """A refused command's status and body (Litestar's handler below, and the front of fast_paths.py)."""
    return ERROR_STATUS.get(exc.code, 409), error_body(exc.code, str(exc))


def queue_error(_: Request[Any, Any, Any], exc: QueueError) -> Response[dict[str, str]]:
    return error_response(*queue_error_answer(exc))


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    detail = str(exc.detail)
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        messages = [
            f"{item.get('key') or 'body'}: {item.get('message')}" for item in exc.extra if isinstance(item, dict)
        ]
        detail = "; ".join(messages) or detail
    status = exc.status_code
    code = HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    return error_response(status, error_body(code, detail))


UNEXPECTED = error_body("internal_error", "the server failed to handle this request; it has been logged")


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, UNEXPECTED)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    QueueError: queue_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
