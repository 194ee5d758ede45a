"""One service process per core: a parent (`parent`) running N workers (`worker`) that share the gRPC and HTTP
ports with SO_REUSEPORT, the ports held against other processes (`ports`), parent and workers linked by a socket
pair (`link`). See docs/ARCHITECTURE.md, "One process per core"."""

from server.errors import PortInUse
from server.group.parent import WorkerFailed, WorkerGroup, run_group
from server.group.ports import hold_port
from server.group.worker import run_worker

__all__ = ["PortInUse", "WorkerFailed", "WorkerGroup", "hold_port", "run_group", "run_worker"]
