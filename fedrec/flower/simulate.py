"""A fedrec run on Flower's simulation engine from Python (tests, benchmarks, notebooks).

``flwr run`` is the supported way to run the app (see README); Flower's Python entry point
(``flwr.simulation.run_simulation``, deprecated but still in flwr 1.41) starts Ray in this process
and takes no run config, so the ServerApp is built with it (``make_server_app``).
"""

from __future__ import annotations

import os
from typing import Any


def simulate(run_config: dict[str, Any], num_supernodes: int, cpus: int = 2) -> dict[str, Any]:
    """Run ``run_config`` (flat fedrec / ``flower.*`` keys) on ``num_supernodes`` simulated SuperNodes
    (one CPU each, ``cpus`` for Ray); returns ``summary``, ``run_dir`` and ``traffic`` (per round)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from fedrec.flower.client_app import app as client_app
    from fedrec.flower.server_app import make_server_app

    result: dict[str, Any] = {}

    def done(summary: dict[str, Any], run_dir: Any, clients: Any) -> None:
        result.update(summary=summary, run_dir=run_dir, traffic=clients.traffic)

    run_simulation(
        server_app=make_server_app(run_config, done), client_app=client_app, num_supernodes=num_supernodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus}},
    )  # fmt: skip
    if "run_dir" not in result:
        raise RuntimeError("the Flower simulation ended without a result (see its log above)")
    return result
