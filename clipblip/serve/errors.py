"""An HTTP answer other than 200, as every route gives it: ``{"error": {"type", "message", "index"}}``; and the
batcher's refusals."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..errors import ImageTooLargeError

__all__ = ["ApiError", "QueueFull", "ShuttingDown"]


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` items already."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


class ApiError(HTTPException):
    """An answer other than 200: status, error type, message, and the failing item's index (or None). An
    HTTPException, so that one raised while FastAPI reads the body (a body over the limit) keeps its status."""

    def __init__(self, status: int, type_: str, message: str, index: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.status, self.type, self.message, self.index = status, type_, message, index

    def __str__(self) -> str:
        return self.message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"type": self.type, "message": self.message, "index": self.index}},
                            status_code=self.status, headers=self.headers)

    @classmethod
    def of(cls, error: Exception, index: int | None = None) -> ApiError:
        """The answer for an engine error (its class's ``http_status``; else 413 for an image over the pixel
        limit, 422 for the rest), or a full queue."""
        if isinstance(error, (QueueFull, ShuttingDown)):
            return cls(503, type(error).__name__, str(error), None, {"Retry-After": "1"})
        status = getattr(error, "http_status", 413 if isinstance(error, ImageTooLargeError) else 422)
        return cls(status, type(error).__name__, str(error), index)
