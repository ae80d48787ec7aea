"""Keeping a worker's lease on a row alive while it works, so a dead worker's lease simply expires."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid

from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name for this worker's claim: host, process and a random part, unique across workers."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseHeartbeat:
    """Renews ``lease_expires_at`` on the rows of ``held`` every ``every_seconds``, from its own thread
    (and database connection), until the block ends or the lease is no longer held (finished,
    waiting, or taken over by another worker)."""

    def __init__(self, held: QuerySet, *, lease_seconds: float, every_seconds: float, name: str) -> None:
        self._held = held
        self._lease = dt.timedelta(seconds=lease_seconds)
        self._every = every_seconds
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every * 2)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._every):
                try:
                    renewed = self._held.update(lease_expires_at=timezone.now() + self._lease)
                except Exception:
                    logger.exception("could not renew the lease %s", self._name)
                    continue
                if not renewed:
                    return
        finally:
            connections.close_all()  # this thread's connections only
