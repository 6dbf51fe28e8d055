"""Image preprocessing in PIL and NumPy, identical to the torchvision transforms the models were
trained with, so that the CPU path does not need torch to prepare its input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes a model input: resize, crop, normalise."""

    size: int
    mode: str  # "shortest" (resize short side, centre crop) | "squash" (resize to size x size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def describe(self) -> str:
        return (
            f"{self.mode}:{self.size}:{self.interpolation}:"
            f"mean={','.join(f'{m:.4f}' for m in self.mean)}:std={','.join(f'{s:.4f}' for s in self.std)}"
        )

    def __call__(self, img: Image.Image) -> np.ndarray:
        """RGB picture -> float32 array of shape (3, size, size)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        resample = _RESAMPLE[self.interpolation]
        if self.mode == "squash":
            img = img.resize((self.size, self.size), resample=resample)
        elif self.mode == "shortest":
            img = center_crop(resize_shortest(img, self.size, resample), self.size)
        else:
            raise ValueError(f"unknown resize mode {self.mode!r}")
        arr: np.ndarray = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self(img) for img in images]) if images else np.zeros((0, 3, self.size, self.size), np.float32)


def resize_shortest(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Same output size rule as ``torchvision.transforms.Resize(size)``."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample=resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Same rounding as ``torchvision.transforms.CenterCrop(size)``."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))
