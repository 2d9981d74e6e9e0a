"""Errors as they cross the wire: a code a program can act on, a message for people."""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"                  # malformed frame or wrong types
    TOO_LARGE = "too_large"                      # frame over the size limit
    UNSUPPORTED_VERSION = "unsupported_version"  # client too old or too new
    UNKNOWN_OP = "unknown_op"
    INVALID_TASK = "invalid_task"
    NOT_FOUND = "not_found"
    AMBIGUOUS = "ambiguous"                      # an id prefix matching several
    PERMISSION_DENIED = "permission_denied"
    CONFLICT = "conflict"                        # e.g. cluster busy or in the wrong state
    UNAVAILABLE = "unavailable"                  # shutting down, or no capacity
    BUSY = "busy"                                # a share or limit reached: retry later
    FAILED = "failed"                            # the request ran and failed
    INTERNAL = "internal"


class Error(msgspec.Struct, tag="error", tag_field="t", omit_defaults=True):
    code: ErrorCode
    message: str
    hint: str = ""


class SkydError(Exception):
    """Raised by handlers; the server sends it to the client as an Error frame."""

    def __init__(self, code: ErrorCode, message: str, hint: str = ""):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint

    def to_wire(self) -> Error:
        return Error(self.code, self.message, self.hint)
