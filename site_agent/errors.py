"""The one way a task handler says no: a wire error code and a message for the operator."""

from __future__ import annotations


class TaskFailed(Exception):
    """A task the site refuses or cannot do; `code` is a wire TaskErrorCode.

    The message goes back to the coordinator, so it never holds a patient-level value or a local
    path; the full detail stays in the site's log and audit log.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.audited = False  # True once the raiser wrote its own audit entry
