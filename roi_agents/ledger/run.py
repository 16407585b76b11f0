"""Plan against a shared ledger.

What is left comes from the scope's balance, each decision's cap is reserved before its step
runs, and the real spend is committed after.
"""

from __future__ import annotations

from collections.abc import Sequence

from roi_agents.allocate import Controller
from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.ledger.base import Amount, Ledger, Reservation, check_scope, check_ttl
from roi_agents.types import Decision, Plan, Spend, Step

__all__ = ["LedgerRun"]


class LedgerRun:
    """One agent run that spends from a ledger scope shared with other workers.

    Args:
        ledger: the shared ledger.
        scope: where this run spends, e.g. ``"acme/bob/thread-42"``.
        controller: plans the pending steps.
        ttl: seconds a step's hold lasts if the worker never commits (a crash).
        retries: re-plans when another worker took the budget between plan and reserve.

    Example:
        >>> run = LedgerRun(ledger, "acme/bob", Controller(predictor=prior))  # doctest: +SKIP
        >>> decision, hold = run.decide(pending)  # doctest: +SKIP
        >>> spend = call_model(max_tokens=decision.cap.tokens)  # doctest: +SKIP
        >>> run.settle(hold, spend)  # doctest: +SKIP
    """

    def __init__(
        self,
        ledger: Ledger,
        scope: str,
        controller: Controller,
        *,
        ttl: float = 600.0,
        retries: int = 5,
    ) -> None:
        if retries < 0:
            raise InvalidValueError("retries", f"must be >= 0, got {retries}")
        self.ledger = ledger
        self.scope = check_scope(scope)
        self.controller = controller
        self.ttl = check_ttl(ttl)
        self.retries = retries

    def plan(self, pending: Sequence[Step]) -> Plan:
        """Plan the pending steps with what the scope (and its ancestors) have left."""
        return self.controller.plan(pending, self.ledger.balance(self.scope).as_budget())

    def decide(
        self, pending: Sequence[Step], *, idempotency_key: str | None = None
    ) -> tuple[Decision, Reservation | None]:
        """Plan, then reserve the next step's cap; ``None`` when the step is skipped.

        If another worker takes the budget between the plan and the reservation, the ledger
        refuses and the run re-plans from the new balance, up to ``retries`` times; then the
        step is skipped.
        """
        if not pending:
            raise InvalidValueError("pending", "no pending steps")
        for _ in range(self.retries + 1):
            decision = self.plan(pending).next
            assert decision is not None
            if decision.skipped:
                return decision, None
            cap = decision.cap
            amount = Amount.of_cap(cap)
            try:
                hold = self.ledger.reserve(
                    self.scope, amount, ttl=self.ttl, idempotency_key=idempotency_key
                )
            except BudgetExceeded:
                continue
            return decision, hold
        reason = f"skip: other workers took the budget first ({self.retries + 1} tries)"
        return Decision.skip(pending[0].id, reason), None

    def settle(self, hold: Reservation | None, spend: Spend) -> Reservation | None:
        """Commit what the step really spent; the rest of its hold is free again."""
        if hold is None:
            return None
        return self.ledger.commit(hold, Amount.of(spend))
