"""How the service ends: :class:`ServiceStop` and the exit statuses it carries.

Why a module of its own: every unit of the service (delivery, transactions, the time-range mode,
the loop) can decide that the service must stop, and the loop alone turns that into an exit
status; keeping the exception here lets those units raise it without importing the loop.
"""

from __future__ import annotations

from broker_plugin.errors import BalBrokerError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2


class ServiceStop(BalBrokerError):
    """A condition that ends the service with ``exit_code`` after draining (not a crash)."""

    reason = "service_stop"

    def __init__(self, message: str, exit_code: int = EXIT_INTERNAL) -> None:
        super().__init__(message)
        self.exit_code = exit_code

