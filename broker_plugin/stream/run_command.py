"""``bal-broker run``: the command line of the streaming service (:mod:`broker_plugin.stream.service`).

Why apart from the service: this is the process around it -- configuration, librdkafka's check of
the client settings, logging, the signal handlers (installed before the service is built, so a
SIGTERM while the bundle loads or the history store is awaited ends the start-up cleanly) and the
choice between one process and ``--workers N``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from broker_plugin.config import load_config
from broker_plugin.errors import ConfigError
from broker_plugin.stream.client_check import check_client_settings
from broker_plugin.stream.service import Service
from broker_plugin.stream.stop import EXIT_OK
from broker_plugin.stream.workers import run_workers, worker_from_env

log = logging.getLogger("broker_plugin.stream.service")



def add_parser(subparsers: Any) -> None:
    """Register ``bal-broker run --config FILE [--workers N]`` (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser(
        "run", help="the streaming service: consume alerts, annotate, produce (until SIGTERM)",
        description="Consume alerts from Kafka, annotate them and produce annotated alerts, BAL candidates and "
                    "dead letters, until SIGTERM/SIGINT (or the end of processing.time_to). Settings come from "
                    "--config and BAL_BROKER__SECTION__KEY environment variables.")
    p.add_argument("--config", metavar="FILE", default=None, help="YAML configuration (see deploy/)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N worker processes in the same consumer group (default 1)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from broker_plugin.stream.logs import setup_logging

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cfg = load_config(args.config)
    check_client_settings(cfg)  # librdkafka's verdict on the settings: one line, exit 2, before any start
    if args.workers > 1:
        setup_logging(cfg.observability.log_level, cfg.observability.log_format)
        return run_workers(args.config, args.workers, cfg)
    setup_logging(cfg.observability.log_level, cfg.observability.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    # handlers first: a SIGTERM while the bundle loads or the store is awaited ends the start-up cleanly
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            service = Service(cfg, worker=worker_from_env(), stop=stop)  # BundleError -> exit 2
        except ConfigError:
            if stop.is_set():
                log.info("stopped during start-up")
                return EXIT_OK
            raise
        return service.run(stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
