"""What can stop an image from being fetched, accepted or written, by whose fault.

The library says *what kind* of trouble it met; whoever serves a request (the agent)
turns the kind into a status code: :class:`ImageError` itself is a failure here (500),
:class:`BadInput` is the request's or the image's fault (400: asking again unchanged
fails again) and :class:`Conflict` is the disk's state (409: no disk matches, or the
disk is in use).
"""

from __future__ import annotations


class ImageError(Exception):
    """Anything that stops an image from being fetched, accepted or written."""


class BadInput(ImageError):
    """The request or the image it names is wrong (a bad format, checksum or size)."""


class Conflict(ImageError):
    """The target disk cannot be used as things stand (in use, or none matches)."""


def with_outcome(error: ImageError, outcome: str) -> ImageError:
    """``error``, its kind kept, with what became of the disk appended to its message."""
    error.args = (f"{error}; {outcome}", *error.args[1:])
    return error
