"""Errors the service reports to its users, each with an HTTP status and a stable code."""

from __future__ import annotations


class AppError(Exception):
    status_code = 400
    code = "bad_request"
    label: str  # only where MatchingService.prepare_photos names the file the error is about
    headers: dict[str, str] | None = None  # HTTP headers the answer carries (Retry-After)


    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code


class BadImage(AppError):
    """The upload is not an image we can read (wrong type, truncated, corrupt)."""

    status_code = 422
    code = "bad_image"


class ImageTooLarge(AppError):
    """Too many bytes or too many pixels (decompression bomb)."""

    status_code = 413
    code = "image_too_large"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class IndexModelMismatch(AppError):
    """The index was built with another model than the one now configured."""

    status_code = 409
    code = "index_model_mismatch"


class ConfigError(AppError, ValueError):
    """A setting that cannot work here (an unknown model, a GPU that is not there): said, not a traceback."""

    status_code = 500
    code = "config_error"


class ModelUnavailable(AppError):
    status_code = 503
    code = "model_unavailable"


class Unauthorized(AppError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    """A valid key whose role does not allow this."""

    status_code = 403
    code = "forbidden"


class ServerBusy(AppError):
    """Too much costly work of one kind at once (large image decodes): the client may retry later."""

    status_code = 503
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
