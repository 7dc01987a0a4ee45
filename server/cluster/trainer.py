"""The shared trainer with several workers (``PORTRAIT_WORKERS>1``): one Ray actor, the single writer of the
learnt models, fed through a durable Redis Stream (the workers' side: ``server.models.shared``).

``TrainerActor`` reads the trainer stream in order and learns each ``(worker, number)`` once. It checkpoints its
models with the stream ID they cover and the per-worker numbers to ``<data dir>/trainer/``, so a trainer killed
and restarted learns the same entries in the same order and ends with the same models as one never killed;
entries before its checkpoint are trimmed (``PORTRAIT_LOG_RETENTION_S`` = -1 keeps them). Workers pull its
models every ``PORTRAIT_MODEL_PUBLISH_S``.

Models depend on the order of messages (online learning) and workers interleave differently from run to run,
so with N workers the models are exact per trainer stream, not equal to one worker's run; every count, window
and tag stays exact (they are per user, in the workers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

from server.log.atomic import write_atomic
from server.models.shared import learn_entry, redis_client, shared_publication
from server.models.trainer import ITEM_STATS, Trainer, TrainerConfig

log = logging.getLogger("portrait")

STREAM_READ = 64  # stream entries read (and learnt) per round
CHECKPOINT_FORMAT = 1


class TrainerActor:
    """The single writer of the learnt models (a Ray actor)."""

    def __init__(self, config: TrainerConfig, url: str, cluster: bool, key: str, checkpoint_dir: Path,
                 checkpoint_interval_s: float, keep_stream: bool, log_level: str = "INFO") -> None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s trainer: %(message)s")
        self.config = config
        self.url, self.cluster, self.key = url, cluster, key
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.keep_stream = keep_stream
        self.trainer = Trainer(config)
        self.learnt: dict[int, int] = {}
        self.last_id = "0-0"
        self.entries = 0
        self._ready: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: Any = None

    @property
    def path(self) -> Path:
        return self.checkpoint_dir / "trainer.pkl"

    async def _started(self) -> None:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        if self.path.exists():
            doc = pickle.loads(await asyncio.to_thread(self.path.read_bytes))
            self.trainer.load_state(doc["state"])
            self.learnt, self.last_id, self.entries = doc["learnt"], doc["last_id"], doc["entries"]
            log.info("trainer: loaded its checkpoint (stream ID %s, %d entries learnt)", self.last_id, self.entries)
        self._client = redis_client(self.url, self.cluster)
        self._runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        checkpointed = time.monotonic()
        while True:
            try:
                got = await asyncio.to_thread(self._client.xread, {self.key: self.last_id}, STREAM_READ, 200)
            except Exception as exc:
                log.warning("trainer: reading its stream failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for _, entries in got or []:
                for entry_id, fields in entries:
                    learn_entry(self.trainer, self.learnt, int(fields[b"w"]), int(fields[b"s"]),
                                pickle.loads(fields[b"m"]))
                    self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self.entries += 1
                await asyncio.sleep(0)
            if time.monotonic() - checkpointed >= self.checkpoint_interval_s:
                await self.checkpoint()
                checkpointed = time.monotonic()

    async def checkpoint(self) -> None:
        """Write the models, the stream ID they cover and the per-worker numbers; trim the entries before."""
        body = pickle.dumps({"format": CHECKPOINT_FORMAT, "state": self.trainer.state(), "learnt": dict(self.learnt),
                             "last_id": self.last_id, "entries": self.entries}, protocol=5)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_atomic, self.path, body)
        if not self.keep_stream and self.last_id != "0-0":
            await asyncio.to_thread(self._client.xtrim, self.key, minid=self.last_id)

    # -- calls ------------------------------------------------------------------------------------
    async def publication(self, worker: int) -> bytes:
        """(the number of ``worker``'s messages the models cover, versions, the models), pickled here: the
        models are live objects the stream loop goes on changing once this returns."""
        await self._started()
        versions = {k: v for k, v in self.trainer.versions.items() if k != ITEM_STATS}
        return pickle.dumps((self.learnt.get(worker, 0), versions, shared_publication(self.trainer)), protocol=5)

    async def status(self) -> dict[str, Any]:
        await self._started()
        return {"pid": os.getpid(), "host": socket.gethostname(), "last_id": self.last_id, "entries": self.entries,
                "learnt": dict(self.learnt),
                "model_versions": {k: v for k, v in self.trainer.versions.items() if k != ITEM_STATS}}

    async def stop(self) -> bool:
        """A final checkpoint (the front end then kills the actor)."""
        if self._ready is None:
            return False
        await self._started()
        if self._runner:
            self._runner.cancel()
        await self.checkpoint()
        return True
