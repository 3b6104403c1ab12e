"""What can go wrong with an image, each error saying what to do about it."""

from __future__ import annotations

from store.errors import StoreError


class ImageError(StoreError):
    """Base of the image errors."""


class InvalidImageArgument(ImageError):
    """A name, size or option that cannot be used (the caller's mistake)."""


class ImageNotFound(ImageError):
    pass


class ImageExists(ImageError):
    pass


class DamagedHeader(ImageError):
    """A header object whose content does not decode: never guessed at, never overwritten."""


class ImageBusy(ImageError):
    """The image is locked by a live holder, or being removed."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class LockLost(ImageError):
    """This writer no longer holds the image's lock (broken, or its lease ran out)."""
