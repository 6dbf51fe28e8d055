"""The Ray engine: the same groups as the local engine, decoded by Ray tasks and searched by a pool
of actors (Ray Data ``map_batches`` with a callable class) that each load the model and open the
registry once.

The driver reads the dump as a stream and hands Ray one window of groups at a time, so its memory
stays bounded whatever the dump's size; results come back as a stream and are written and
checkpointed as they arrive. On a cluster, the dump, its photos and the data directory must be on
storage every node sees, and the nodes must have this package installed.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Callable, Iterable

import numpy as np

from app.core.config import Settings
from app.scan.work import DecodeConfig, Group, GroupResult, decode_group, search_group

WINDOW_GROUPS = 256  # groups handed to Ray at once (a few thousand listings)


class RayEngine:
    name = "ray"

    def __init__(self, settings: Settings, address: str | None = None, actors: int = 1, gpus_per_actor: float = 0,
                 cpus_per_actor: float = 1, window_groups: int = WINDOW_GROUPS):
        # Workers may start in another folder: give them absolute paths.
        self.settings = settings.model_copy(update={
            "data_dir": settings.data_dir.resolve(), "models_dir": settings.models_dir.resolve(),
            "database_url": settings.db_url,
        })
        self.address = address
        self.actors = max(1, actors)
        self.gpus_per_actor = gpus_per_actor
        self.cpus_per_actor = cpus_per_actor
        self.window_groups = max(1, window_groups)

    def _connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the scan draws its own progress bar
        return ray

    def run(self, groups: Iterable[Group], source, cfg: DecodeConfig, top_k: int, min_verdict: str,
            emit: Callable[[GroupResult], None]) -> None:
        ray = self._connect()
        settings = self.settings.model_dump(mode="json")
        groups = iter(groups)
        while window := list(itertools.islice(groups, self.window_groups)):
            rows = [{"group": g.number, "payload": pickle.dumps(g, protocol=pickle.HIGHEST_PROTOCOL)} for g in window]
            ds = (
                ray.data.from_items(rows, override_num_blocks=len(rows))
                .map(_decode_row, fn_kwargs={"source": source, "cfg": cfg})
                .map_batches(
                    SearchActor, batch_size=1, batch_format="numpy", concurrency=self.actors,
                    num_gpus=self.gpus_per_actor, num_cpus=self.cpus_per_actor,
                    fn_constructor_kwargs={"settings": settings, "top_k": top_k, "min_verdict": min_verdict},
                )
            )
            for row in ds.iter_rows():
                emit(GroupResult.loads(row["result"]))


def _decode_row(row: dict, source, cfg: DecodeConfig) -> dict:
    group: Group = pickle.loads(row["payload"])
    decoded = decode_group(source, group, cfg)
    return {"group": row["group"], "payload": pickle.dumps((group, decoded), protocol=pickle.HIGHEST_PROTOCOL)}


class SearchActor:
    """One per actor: the model is loaded and the registry opened once, then groups stream through."""

    def __init__(self, settings: dict, top_k: int, min_verdict: str):
        from app.service import MatchingService

        self.service = MatchingService(Settings.model_validate(settings)).start()
        self.top_k = top_k
        self.min_verdict = min_verdict

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in batch["payload"]:
            group, decoded = pickle.loads(payload)
            results.append(search_group(self.service, group, decoded, self.top_k, self.min_verdict).dumps())
        return {"group": np.asarray(batch["group"]), "result": np.array(results, dtype=object)}
