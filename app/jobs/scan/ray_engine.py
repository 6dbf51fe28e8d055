"""The Ray engine: the same groups as the local engine, decoded by Ray tasks and searched by a pool
of actors (Ray Data ``map_batches`` with a callable class) that each load the model and open the
registry once for the whole scan.

The whole scan is one Ray Data dataset. Its source is a read task that streams the dump's groups
(``GroupStream``) one small block at a time, so Ray's streaming executor and its backpressure bound
memory whatever the dump's size; results come back as a stream and are written and checkpointed as
they arrive. On a cluster, the dump, its photos and the data directory must be on storage every node
sees, and the nodes must have this package installed.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Callable, Iterable

import numpy as np
from ray.data import Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask

from app.core.config import Settings
from app.jobs.scan.sources import ImageSource
from app.jobs.scan.work import (
    DecodeConfig,
    Group,
    GroupResult,
    decode_group,
    search_group,
    single_threaded_decode_process,
)

GROUPS_PER_BLOCK = 1  # a block is the unit Ray decodes in parallel and hands to an actor


class RayEngine:
    name = "ray"

    def __init__(self, settings: Settings, address: str | None = None, actors: int = 1, gpus_per_actor: float = 0,
                 cpus_per_actor: float = 1):
        # Workers may start in another folder: give them absolute paths.
        self.settings = settings.model_copy(update={
            "data_dir": settings.data_dir.resolve(), "models_dir": settings.models_dir.resolve(),
            "database_url": settings.db_url,
        })
        self.address = address
        self.actors = max(1, actors)
        self.gpus_per_actor = gpus_per_actor
        self.cpus_per_actor = cpus_per_actor
        self.model_loads: set[str] = set()  # one id per SearchActor start: the model is loaded once per actor

    def _connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the scan draws its own progress bar
        return ray

    def run(self, groups: Iterable[Group], source: ImageSource, cfg: DecodeConfig, top_k: int, min_verdict: str,
            emit: Callable[[GroupResult], None]) -> None:
        """``groups`` must be picklable and re-iterable in a Ray task (a ``GroupStream``)."""
        ray = self._connect()
        settings = self.settings.model_dump(mode="json")
        ds = (
            ray.data.read_datasource(GroupSource(groups), override_num_blocks=1)
            .map(_decode_row, fn_kwargs={"source": source, "cfg": cfg})
            .map_batches(
                SearchActor, batch_size=1, batch_format="numpy", concurrency=self.actors,
                num_gpus=self.gpus_per_actor, num_cpus=self.cpus_per_actor,
                fn_constructor_kwargs={"settings": settings, "top_k": top_k, "min_verdict": min_verdict,
                                       "archive_copy_px": cfg.archive_copy_px},
            )
        )
        for row in ds.iter_rows():
            self.model_loads.add(row["model_load"])
            emit(GroupResult.loads(row["result"]))


class GroupSource(Datasource):
    """A Ray Data source of one read task that streams the groups, a block of a few at a time."""

    def __init__(self, groups: Iterable[Group]):
        self.groups = groups

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown until read; the dump may be far larger than memory

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list:
        groups = self.groups
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: _group_blocks(groups), metadata)]


def _group_blocks(groups: Iterable[Group]):
    import pyarrow as pa

    rows = []
    for group in groups:
        rows.append({"group": group.number, "payload": pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)})
        if len(rows) == GROUPS_PER_BLOCK:
            yield pa.Table.from_pylist(rows)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows)


def _decode_row(row: dict, source: ImageSource, cfg: DecodeConfig) -> dict:
    single_threaded_decode_process()  # a Ray CPU task: one core, as Ray counts it
    group: Group = pickle.loads(row["payload"])
    decoded = decode_group(source, group, cfg)
    return {"group": row["group"], "payload": pickle.dumps((group, decoded), protocol=pickle.HIGHEST_PROTOCOL)}


class SearchActor:
    """One per actor: the model is loaded and the registry opened once, then groups stream through."""

    def __init__(self, settings: dict, top_k: int, min_verdict: str, archive_copy_px: int | None = None):
        from app.service import MatchingService

        self.service = MatchingService(Settings.model_validate(settings)).start()
        self.top_k = top_k
        self.min_verdict = min_verdict
        self.archive_copy_px = archive_copy_px
        self.load_id = uuid.uuid4().hex

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in batch["payload"]:
            group, decoded = pickle.loads(payload)
            results.append(search_group(self.service, group, decoded, self.top_k, self.min_verdict,
                                        self.archive_copy_px).dumps())
        return {"group": np.asarray(batch["group"]), "result": np.array(results, dtype=object),
                "model_load": np.array([self.load_id] * len(results), dtype=object)}
