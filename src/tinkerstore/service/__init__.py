"""Business rules of the checkpoint store: save/commit/load, list, publish, TTL, owners, sweeper."""

from tinkerstore.service.config import open_store
from tinkerstore.service.keys import Principal
from tinkerstore.service.saves import PendingSave
from tinkerstore.service.store import MAX_TTL_SECONDS, MIN_TTL_SECONDS, Store, check_ttl
from tinkerstore.service.sweeper import Sweeper, SweepReport

__all__ = [
    "MAX_TTL_SECONDS",
    "MIN_TTL_SECONDS",
    "PendingSave",
    "Principal",
    "Store",
    "SweepReport",
    "Sweeper",
    "check_ttl",
    "open_store",
]
