"""The controller, split by concern: `reconcile` (observe, decide, act), `observe` (reads), `act`
(writes), `evaluations` (background evaluations and their bounds) and `settings` (the operator's
environment). The staging queue's logic is pure, in `core.queue`."""

from modelrollout.controller.reconcile import Controller

__all__ = ["Controller"]
