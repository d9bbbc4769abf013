"""Shared by the 2-process gloo tests: a free loopback port and the process-group set-up."""
from __future__ import annotations

import socket

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join the CPU (gloo) process group of ``world`` ranks rendezvousing on ``127.0.0.1:port``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
