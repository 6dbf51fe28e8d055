"""How many threads each process may use, applied to every library with its own thread pool.

Each numeric library sizes its pool to all the machine's cores. With several uvicorn workers on one
machine, every worker's model runtime, OpenCV, BLAS and FAISS would each run that many threads:
on 2 cores, 2 workers give 8 or more busy threads fighting for 2 cores. A process therefore gets
``cores // workers`` threads (at least 1), or ``HM_THREADS`` where set.
"""

from __future__ import annotations

import logging
import os
import sys

from app.core.config import Settings

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def intra_op_threads(settings: Settings) -> int | None:
    """Threads one process's libraries may each use: ``HM_THREADS``, else the cores shared among the
    workers; None for a single worker, where each library's own choice (all cores; torch and ONNX
    Runtime count physical ones) is already right."""
    if settings.threads:
        return settings.threads
    if settings.workers <= 1:
        return None
    return max(1, available_cores() // settings.workers)


def apply_thread_limits(threads: int) -> dict[str, int]:
    """Limit OpenCV, BLAS (threadpoolctl), FAISS and, if loaded, torch to ``threads``.

    Torch's, OpenCV's and OpenBLAS's pools are process-wide; OpenMP's setting (FAISS, OpenMP BLAS) holds
    for the calling thread, and other threads take it from ``set_thread_environment``.

    Model runtimes created afterwards (ONNX Runtime, OpenVINO) take the number from the encoder
    factory. Torch is limited only when something already imported it: the CPU path must not import
    it just to set a number. Returns what was applied, by library.
    """
    applied: dict[str, int] = {}
    import cv2

    cv2.setNumThreads(threads)
    applied["opencv"] = threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # every BLAS and OpenMP runtime loaded in this process
    applied["blas"] = threads
    import faiss

    faiss.omp_set_num_threads(threads)
    applied["faiss"] = threads
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        applied["torch"] = threads
    log.info("threads per library in this process: %d (%s)", threads, ", ".join(applied))
    return applied


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_thread_environment(threads: int) -> dict[str, str]:
    """Put ``threads`` in the variables OpenMP and BLAS read when they load, unless the operator set them.

    ``apply_thread_limits`` reaches OpenMP only in the thread that calls it (an OpenMP setting is per
    thread), while FAISS searches run in the API's request threads: those start from these variables.
    ``serve`` calls this before uvicorn starts (and imports the app in) its worker processes.
    """
    for var in THREAD_ENV_VARS:
        os.environ.setdefault(var, str(threads))
    return {var: os.environ[var] for var in THREAD_ENV_VARS}
