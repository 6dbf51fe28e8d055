"""Micro-batching of concurrent embed calls: every caller gets exactly its own vectors, errors reach
only their caller, concurrent calls share forward passes, and closing never strands a caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings
from app.embedding import create_serving_encoder
from app.embedding.base import ImageEncoder
from app.embedding.preprocess import Preprocessing
from app.embedding.runtimes.batching import BatchingEncoder
from tests.conftest import random_photo

SIZE = 8


class ColourEncoder(ImageEncoder):
    """A tiny deterministic model: the vector of a picture is its mean colour and brightness.

    Records the size of every forward pass; ``gate`` (when set) holds the first pass until released,
    and a picture whose top-left pixel is pure red makes the whole pass fail.
    """

    name = "colour"
    dim = 4

    def __init__(self):
        super().__init__(Preprocessing(size=SIZE, mode="squash", mean=(0, 0, 0), std=(1, 1, 1)), batch_size=64)
        self.passes: list[int] = []
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def weights_path(self):
        raise NotImplementedError

    def _load(self) -> None:
        pass

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        self.passes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
            self.gate = None
        if np.any(np.all(batch[:, :, 0, 0] == np.array([1.0, 0.0, 0.0], np.float32), axis=1)):
            raise ValueError("poisoned picture")
        means = batch.mean(axis=(2, 3))
        return np.concatenate([means, 0.1 + means.sum(axis=1, keepdims=True)], axis=1)


def poisoned(i: int) -> Image.Image:
    img = random_photo(i).resize((SIZE, SIZE))  # the model's input size: preprocessing leaves it as it is
    img.putpixel((0, 0), (255, 0, 0))
    return img


def photos(seed: int, n: int) -> list[Image.Image]:
    return [random_photo(seed * 10 + k).resize((32, 32)) for k in range(n)]


def test_concurrent_callers_each_get_their_own_vectors():
    inner = ColourEncoder()
    batched = BatchingEncoder(inner, wait_ms=20, max_batch=16)
    requests = [photos(i, 1 + i % 3) for i in range(24)]
    expected = [inner.embed(r) for r in requests]
    inner.passes.clear()
    start = threading.Barrier(len(requests))

    def call(i):
        start.wait()
        return batched.embed(requests[i])

    with ThreadPoolExecutor(len(requests)) as pool:
        got = list(pool.map(call, range(len(requests))))
    batched.close()
    for want, have in zip(expected, got):
        assert have.shape == want.shape and have.dtype == np.float32
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-7)
    assert sum(inner.passes) == sum(len(r) for r in requests)
    assert max(inner.passes) <= 16


def test_requests_queued_while_a_batch_runs_share_the_next_forward_pass():
    inner = ColourEncoder()
    inner.gate = threading.Event()
    batched = BatchingEncoder(inner, wait_ms=0, max_batch=16)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batched.embed, photos(0, 1))
        assert inner.entered.wait(10)  # the worker is inside the first pass, held by the gate
        rest = [pool.submit(batched.embed, photos(i, 1)) for i in range(1, 8)]
        deadline = time.monotonic() + 10
        while len(batched._requests) < 7 and time.monotonic() < deadline:
            time.sleep(0.005)
        inner.gate.set()
        results = [first.result(10)] + [f.result(10) for f in rest]
    batched.close()
    assert inner.passes == [1, 7]  # the seven waiting callers went through as one batch
    assert batched.batch_sizes == [1, 7]
    for i, vec in enumerate(results):
        np.testing.assert_allclose(vec, ColourEncoder().embed(photos(i, 1)), rtol=1e-6)


def test_a_failing_input_fails_only_its_own_caller():
    inner = ColourEncoder()
    inner.gate = threading.Event()
    batched = BatchingEncoder(inner, wait_ms=0, max_batch=16)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batched.embed, photos(0, 1))
        assert inner.entered.wait(10)
        good = [pool.submit(batched.embed, photos(i, 2)) for i in range(1, 5)]
        bad = pool.submit(batched.embed, [poisoned(9)])
        deadline = time.monotonic() + 10
        while len(batched._requests) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        inner.gate.set()
        first.result(10)
        with pytest.raises(ValueError, match="poisoned"):
            bad.result(10)
        for i, f in enumerate(good, start=1):
            np.testing.assert_allclose(f.result(10), ColourEncoder().embed(photos(i, 2)), rtol=1e-6)
    # The worker survived: later calls still work through it.
    np.testing.assert_allclose(batched.embed(photos(3, 1)), ColourEncoder().embed(photos(3, 1)), rtol=1e-6)
    batched.close()


def test_single_caller_and_large_requests_and_after_close():
    inner = ColourEncoder()
    batched = BatchingEncoder(inner, wait_ms=5, max_batch=4)
    assert batched.embed([]).shape == (0, 4)
    np.testing.assert_allclose(batched.embed(photos(1, 3)), inner.embed(photos(1, 3)), rtol=1e-6)
    big = photos(2, 9)  # more than max_batch: embedded directly, in the caller's thread
    inner.threads.clear()
    np.testing.assert_allclose(batched.embed(big), inner.embed(big), rtol=1e-6)
    assert inner.threads == {threading.current_thread().name}
    worker = batched._worker
    batched.close()
    assert worker is not None and not worker.is_alive()
    batched.close()  # twice is harmless
    np.testing.assert_allclose(batched.embed(photos(4, 2)), inner.embed(photos(4, 2)), rtol=1e-6)


def test_close_finishes_requests_already_queued():
    inner = ColourEncoder()
    inner.gate = threading.Event()
    batched = BatchingEncoder(inner, wait_ms=0, max_batch=2)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batched.embed, photos(0, 1))]
        assert inner.entered.wait(10)
        futures += [pool.submit(batched.embed, photos(i, 1)) for i in range(1, 4)]
        deadline = time.monotonic() + 10
        while len(batched._requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        closer = threading.Thread(target=batched.close)
        closer.start()
        inner.gate.set()
        closer.join(10)
        assert not closer.is_alive()
        assert [len(f.result(10)) for f in futures] == [1, 1, 1, 1]


def test_the_wrapper_is_the_inner_model_to_everyone_else(encoder):
    batched = BatchingEncoder(encoder)
    assert batched.fingerprint == encoder.fingerprint
    assert (batched.name, batched.dim, batched.device) == (encoder.name, encoder.dim, encoder.device)
    assert batched.preprocessing == encoder.preprocessing
    assert (batched.match_threshold, batched.possible_threshold) == (encoder.match_threshold,
                                                                     encoder.possible_threshold)
    assert batched._net is encoder._net  # backend-specific attributes pass through
    pictures = [random_photo(i) for i in range(3)]
    np.testing.assert_allclose(batched.embed(pictures), encoder.embed(pictures), rtol=1e-5, atol=1e-6)
    batched.close()


def test_serving_encoder_batches_unless_max_batch_is_one(tmp_path):
    base = Settings(model="efficientnet-lite0", models_dir=tmp_path, device="cpu")
    served = create_serving_encoder(base.model_copy(update={"batch_wait_ms": 2, "max_batch": 8}))
    assert isinstance(served, BatchingEncoder) and served.max_batch == 8 and served.wait_s == 0.002
    assert not isinstance(create_serving_encoder(base.model_copy(update={"max_batch": 1})), BatchingEncoder)


def test_api_searches_go_through_the_batcher(settings, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import jpeg_bytes

    settings = settings.model_copy(update={"auth": False, "batch_wait_ms": 1, "max_batch": 8})
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        assert isinstance(service.encoder, BatchingEncoder)
        r = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(random_photo(3)), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert service.encoder.batch_sizes  # the search's embedding went through the queue
        worker = service.encoder._worker
    assert worker is not None and not worker.is_alive()  # shut down with the app


class SlowPreprocessing:
    """The model's preprocessing, held for pictures whose top-left pixel is pure green until released."""

    def __init__(self, inner: Preprocessing):
        self.inner = inner
        self.size = inner.size
        self.release = threading.Event()

    def batch(self, images):
        if any(img.getpixel((0, 0)) == (0, 255, 0) for img in images):
            assert self.release.wait(10)
        return self.inner.batch(images)


def test_a_batch_waits_for_callers_still_preparing_and_a_lone_caller_never_waits():
    inner = ColourEncoder()
    slow = SlowPreprocessing(inner.preprocessing)
    inner.preprocessing = slow
    batched = BatchingEncoder(inner, wait_ms=60_000, max_batch=16)  # a wait no test could sit out
    t = time.monotonic()
    alone = batched.embed(photos(1, 1))
    assert time.monotonic() - t < 30 and inner.passes == [1]  # nobody else in sight: no wait
    np.testing.assert_allclose(alone, ColourEncoder().embed(photos(1, 1)), rtol=1e-6)

    late = photos(2, 1)[0]
    late.putpixel((0, 0), (0, 255, 0))
    with ThreadPoolExecutor(2) as pool:
        preparing = pool.submit(batched.embed, [late])
        deadline = time.monotonic() + 10
        while batched._preparing < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        ready = pool.submit(batched.embed, photos(3, 1))
        while batched._requests and time.monotonic() < deadline:
            time.sleep(0.005)  # the worker took the ready request and is waiting for the preparing one
        time.sleep(0.05)
        assert inner.passes == [1]
        slow.release.set()
        preparing.result(10), ready.result(10)
    batched.close()
    assert inner.passes == [1, 2]  # the two went through together
