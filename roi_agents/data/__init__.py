"""Replay data: load recorded outcomes, and pull public ones into the replay format."""

from roi_agents.data.replay import (
    ReplayQuery,
    ReplayRecord,
    load_replay,
    read_records,
    write_records,
)
from roi_agents.data.sources import (
    SOURCES,
    Source,
    convert_pricing_reversal,
    convert_routellm,
    data_home,
    find_data,
    pull,
)

__all__ = [
    "SOURCES",
    "ReplayQuery",
    "ReplayRecord",
    "Source",
    "convert_pricing_reversal",
    "convert_routellm",
    "data_home",
    "find_data",
    "load_replay",
    "pull",
    "read_records",
    "write_records",
]
