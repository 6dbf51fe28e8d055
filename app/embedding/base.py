"""The image encoder lifecycle: locate weights, load once under a lock, embed batches.

Every vector the service stores carries the encoder's fingerprint (model name, hash of the weights
file, preprocessing), so vectors of different models are never mixed in one index.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image

from app.core.files import sha256_file, sha256_hex
from app.embedding.preprocess import Preprocessing

log = logging.getLogger(__name__)


# Runtimes whose vectors equal torch's (cosine >= 0.9999, checked at export): they share torch's
# fingerprint, so an index and a calibration stay valid when only the runtime changes.
EXACT_RUNTIMES = ("torch", "onnx", "openvino")


@dataclass(frozen=True)
class ModelFingerprint:
    name: str
    weights_sha256: str
    preprocessing: str
    dim: int
    runtime: str = "torch"

    @property
    def id(self) -> str:
        """Short stable identifier stored beside every vector; includes the runtime where outputs differ."""
        fields = asdict(self)
        if self.runtime in EXACT_RUNTIMES:
            del fields["runtime"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"{self.name}@{sha256_hex(blob)[:12]}"

    def as_dict(self) -> dict:
        return {**asdict(self), "id": self.id}


class ImageEncoder(ABC):
    """A model that turns RGB pictures into L2-normalised vectors."""

    name: str
    dim: int
    # Cosine scores above which a result is a match / possible match, for this model's scale.
    match_threshold: float = 0.85
    possible_threshold: float = 0.7

    def __init__(self, preprocessing: Preprocessing, device: str = "cpu", batch_size: int = 16):
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded = False
        self._fingerprint: ModelFingerprint | None = None

    @abstractmethod
    def weights_path(self) -> Path:
        """Local file holding the weights (raises ModelUnavailable when missing)."""

    @abstractmethod
    def _load(self) -> None:
        """Build the network and read the weights; called once, under the lock."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, dim) float32, not yet normalised."""

    def export_module(self):
        """The loaded network as one torch module (N, 3, H, W) -> (N, dim), for export to other runtimes."""
        raise NotImplementedError(f"{type(self).__name__} cannot be exported")

    def load(self) -> Self:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    @property
    def fingerprint(self) -> ModelFingerprint:
        if self._fingerprint is None:
            self._fingerprint = ModelFingerprint(
                name=self.name,
                weights_sha256=file_sha256(self.weights_path()),
                preprocessing=self.preprocessing.describe(),
                dim=self.dim,
            )
        return self._fingerprint

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Embed pictures in batches; returns (N, dim) float32 rows of unit length."""
        # Preprocessed a batch at a time: the pixels of a whole scan or rebuild would not fit in memory.
        return self._embed_in_batches(len(images), lambda a, b: self.preprocessing.batch(images[a:b]))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed already preprocessed inputs (N, 3, H, W) in batches; returns (N, dim) unit rows.

        For callers that preprocess elsewhere (the micro-batcher preprocesses in each request's thread).
        """
        return self._embed_in_batches(len(pixels), lambda a, b: pixels[a:b])

    def _embed_in_batches(self, n: int, inputs) -> np.ndarray:
        """``inputs(start, stop)`` gives the model inputs of items start..stop-1."""
        self.load()
        out = np.zeros((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            out[start:stop] = self._forward(inputs(start, stop))
        return l2_normalise(out)

    def embed_one(self, image: Image.Image) -> np.ndarray:
        return self.embed([image])[0]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}
_SIDECAR_MIN_BYTES = 64 << 20  # only large checkpoints are worth a cache file beside them


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) so large files hash once."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    sidecar = path.with_name(path.name + ".sha256.json")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
            with _hash_lock:
                _hash_memo[key] = cached["sha256"]
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    with _hash_lock:
        _hash_memo[key] = digest
    if st.st_size < _SIDECAR_MIN_BYTES:
        return digest
    try:  # best effort: a read-only models dir may refuse the sidecar
        tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
        os.replace(tmp, sidecar)
    except OSError:
        pass
    return digest
