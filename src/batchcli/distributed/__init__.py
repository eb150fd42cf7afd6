"""One job on many engine workers (Ray): `run --workers N` / `--ray-address`.

This package's modules import Ray; this file does not, so the options can be built (and checked)
where Ray is not installed. cluster: start or join a cluster and its workers; worker: the actor;
driver: hand out shards and write through the one `on_event`; stats: per-worker counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchcli.errors import UsageError


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    workers: int | None = None  # engine workers; None: one per GPU of a joined cluster
    address: str | None = None  # "auto" or HOST:PORT of a running cluster; None: start a local one

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.address is not None and not self.address.strip():
            raise UsageError("--ray-address must be auto or HOST:PORT, got an empty string")

    @property
    def wanted(self) -> bool:
        return self.workers is not None or self.address is not None
