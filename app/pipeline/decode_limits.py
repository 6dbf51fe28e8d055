"""What one image decode may cost: its pixels, how many large decodes run at once, the memory after.

* The pixel limit is ``HM_MAX_IMAGE_PIXELS``, checked from the header before a pixel is decoded.
  Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, 89.5 MP, a warning turned error at twice that) is
  turned off when this module is imported: it is process-wide, so it cannot follow a per-call limit
  without a race between threads, and it silently overrode the setting above 89.5 MP. Every upload,
  registry photo and scanned photo is decoded by ``app.pipeline.decode.decode_image``, which checks.
* A decode of more than ``HM_LARGE_DECODE_PIXELS`` (counted as decoded: after a JPEG's DCT scaling)
  holds up to 4 bytes a pixel while it runs (Pillow keeps RGB as 4 bytes): at most
  ``HM_LARGE_DECODES`` of them run at once in a process; one that waited ``HM_LARGE_DECODE_WAIT_S``
  for its turn is refused with ``ServerBusy`` (503 and Retry-After).
* After a large decode the C heap is trimmed: Pillow allocates images in blocks that glibc keeps in its
  arenas after they are freed, so a server that decoded one 88 MP picture held 1 GB more for good.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from app.core.errors import ImageTooLarge, ServerBusy

if TYPE_CHECKING:
    from app.core.config import Settings

Image.MAX_IMAGE_PIXELS = None  # our limit, per call (see the module's docstring)


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 120_000_000
    large_pixels: int = 16_000_000
    large_decodes: int = 2
    wait_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(max_pixels=settings.max_image_pixels, large_pixels=settings.large_decode_pixels,
                   large_decodes=settings.large_decodes, wait_s=settings.large_decode_wait_s)


def default_limits() -> DecodeLimits:
    """The process's settings (``HM_MAX_IMAGE_PIXELS``, ``HM_LARGE_DECODE*``)."""
    from app.core.config import get_settings

    return DecodeLimits.from_settings(get_settings())


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"The image is {width}x{height} pixels, more than the limit of {max_pixels:,} pixels.")


class LargeDecodeGate:
    """A counting semaphore whose size each caller gives (the setting it was decoded under), so a test
    or a reconfigured process needs no new gate; waiters are woken in turn as slots free."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    @contextmanager
    def slot(self, capacity: int, wait_s: float) -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._running >= max(1, capacity):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusy(
                        f"The server is decoding other large images ({capacity} at most at once) and this one "
                        f"waited {wait_s:g} s for its turn; send it again later, or send a smaller photo.",
                        retry_after=max(1, math.ceil(wait_s)))
                self._cond.wait(left)
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()  # capacities may differ between callers: let each recheck


LARGE_DECODES = LargeDecodeGate()  # one per process, as the setting says


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc), after a large decode freed its pixels."""
    if _malloc_trim is not None:
        _malloc_trim(0)
