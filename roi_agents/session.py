"""The budget turn, once: plan, reserve, count the prompt, price, commit once, trace, learn.

Every entry point (the LangGraph nodes, the middleware, the prebuilt agent, a budgeted chat
model) translates to and from a `BudgetSession`; none keeps its own copy of the turn. A session
spends from one ledger scope: its own in-memory ledger by default, or a shared SQLite or
PostgreSQL ledger, so that one budget can span threads, processes and machines.

One turn::

    decision = session.decide(pending)              # plan with what the scope has left
    with session.call(decision, option, prompt=n) as call:   # reserve the cap before sending
        reply = send(max_tokens=call.max_tokens)     # your call, under the cap
        call.charge(price(option, used_in, used_out))  # commit once: the rest is free again

A call that raises before it is charged (a failed attempt, a retry) is committed at its
reserved cap, since what the server spent is unknown; a call whose prompt alone does not fit is
refused before anything is sent. Running out is one vocabulary everywhere (`OnExhausted`).

Example:
    >>> from roi_agents import Budget, Option
    >>> session = BudgetSession(Budget(tokens=1_000))
    >>> option = Option(name="fast", max_tokens=256)
    >>> with session.call(None, option, prompt=100) as call:
    ...     _ = call.charge(price(option, 100, 40))
    >>> call.max_tokens, session.report().spent.tokens, session.remaining().tokens
    (256, 140, 860)
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from opentelemetry import metrics, trace
from pydantic import BaseModel, ConfigDict, NonNegativeInt

from roi_agents.allocate import Controller
from roi_agents.errors import BudgetExceeded, InvalidValueError, LedgerUnavailable, UnknownScope
from roi_agents.ledger.base import Amount, Ledger, ScopeBudget, check_scope, check_ttl
from roi_agents.ledger.memory import MemoryLedger
from roi_agents.predict.base import Learner
from roi_agents.predict.prior import PriorPredictor
from roi_agents.prompt import PromptCount
from roi_agents.telemetry import names
from roi_agents.telemetry.tracing import DecisionTrace, RunTrace
from roi_agents.types import (
    RESOURCES,
    Budget,
    Cap,
    Decision,
    Forecast,
    Option,
    Plan,
    Resource,
    Spend,
    Step,
)

__all__ = [
    "ON_EXHAUSTED",
    "BudgetQuestion",
    "BudgetReport",
    "BudgetSession",
    "Call",
    "Hold",
    "OnExhausted",
    "SessionPool",
    "check_budget",
    "check_on_exhausted",
    "extra_budget",
    "price",
]

logger = logging.getLogger(__name__)

OnExhausted = Literal["degrade", "ask", "end", "error"]
"""What a run does when the budget cannot pay for the next step's cheapest option.

``degrade``: skip that step and go on (later, cheaper steps may still fit); ``ask``: ask a
human for more (LangGraph's ``interrupt``); ``end``: stop the run with a message that says why;
``error``: raise `BudgetExceeded` with the real figures.
"""
ON_EXHAUSTED: tuple[OnExhausted, ...] = ("degrade", "ask", "end", "error")

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
# Seconds between the tries of a commit whose database is away: about 4 s in all.
_COMMIT_BACKOFF = (0.2, 0.5, 1.0, 2.0)
_N = TypeVar("_N", int, float)
_ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


def check_on_exhausted(value: str) -> OnExhausted:
    """Return ``value`` if it is one of `ON_EXHAUSTED`, else raise `InvalidValueError`."""
    for known in ON_EXHAUSTED:
        if value == known:
            return known
    msg = f"one of {', '.join(repr(v) for v in ON_EXHAUSTED)}, got {value!r}"
    raise InvalidValueError("on_exhausted", msg)


def price(
    option: Option | None, input_tokens: int, output_tokens: int, *, tool_calls: int = 0
) -> Spend:
    """The one rule that turns a call's usage into `Spend`.

    Tokens as the server counted them, USD at the option's list prices (none without an
    option), tool calls.

    Example:
        >>> price(Option(name="a", input_price=1.0, output_price=4.0), 1000, 500).usd
        0.003
    """
    usd = option.usd(input_tokens, output_tokens) if option is not None else 0.0
    return Spend(
        input_tokens=input_tokens, output_tokens=output_tokens, usd=usd, tool_calls=tool_calls
    )


def check_budget(budget: object) -> Budget:
    """Return ``budget`` if it is a `Budget` that limits something, else raise.

    Raises:
        InvalidValueError: not a `Budget`, or one without a limit (nothing to plan against).
    """
    if not isinstance(budget, Budget):
        raise InvalidValueError("budget", f"expected a Budget, got {type(budget).__name__}")
    if all(budget.get(r) is None for r in RESOURCES):
        msg = "limits nothing: give tokens=, usd= or tool_calls= (e.g. Budget(tokens=2_000))"
        raise InvalidValueError("budget", msg)
    return budget


def extra_budget(value: object) -> Budget | None:
    """Read what a human granted when asked for more budget: a `Budget`, or ``None`` for no more.

    Accepted: ``None``, ``False`` or ``0`` (no more); a positive number of tokens; a mapping of
    resources (``{"tokens": 2000}``, ``{"usd": 0.5}``); a `Budget`.

    Raises:
        InvalidValueError: anything else (negative, NaN, unknown keys, text, ``True``).

    Example:
        >>> extra_budget({"tokens": 2000})
        Budget(tokens=2000, usd=None, tool_calls=None)
    """
    if value is None or value is False or (type(value) in (int, float) and value == 0):
        return None
    if isinstance(value, Budget):
        return value
    if (type(value) is int and value > 0) or isinstance(value, dict):
        try:
            return Budget.model_validate({"tokens": value} if type(value) is int else value)
        except ValueError as error:
            raise InvalidValueError("resume", f"not a budget: {error}") from None
    msg = (
        f"expected None, a positive token count or a mapping like {{'tokens': 2000}}, got {value!r}"
    )
    raise InvalidValueError("resume", msg)


class BudgetQuestion(BaseModel):
    """What ``on_exhausted="ask"`` asks a human: the step that cannot be paid for, and why.

    The integrations raise it as LangGraph's ``interrupt`` value, dumped to JSON (so any
    checkpointer and the LangGraph server carry it); read it back with
    ``BudgetQuestion.model_validate(interrupt.value)``.

    Attributes:
        question: the question, in words.
        scope: the ledger scope that ran out.
        step: the step's id.
        options: the step's options, by name.
        needs: what the step's cheapest option would cost, per resource (at the plan's
            quantile).
        remaining: what the scope has left.
        shortfall: what is missing, per resource: the least to grant for the step to run.
        prompt_tokens: the step's prompt, as counted (``None``: not known before the call).
        reason: the controller's one-line reason.
        resume_with: how to answer.
        error: why the last answer was not taken, when one was not.
    """

    model_config = _STRICT

    question: str
    scope: str
    step: str
    options: list[str]
    needs: Budget
    remaining: Budget
    shortfall: Budget
    prompt_tokens: NonNegativeInt | None = None
    reason: str
    resume_with: str = "more budget: a token count or e.g. {'tokens': 2000}; or 0 to decline"
    error: str | None = None


class Hold(BaseModel):
    """One call's reservation: what it may spend, held in the ledger before it is sent.

    Plain data, so it survives a checkpoint. ``max_tokens`` is what the call must be sent with
    (``None``: nothing limits its tokens); ``amount`` is the prompt plus ``max_tokens``, priced.
    """

    model_config = _STRICT

    call_id: str
    step_id: str
    option: str
    reservation: str
    amount: Amount
    prompt_tokens: NonNegativeInt
    counted_by: str
    max_tokens: NonNegativeInt | None


class BudgetReport(BaseModel):
    """Where a session stands; nothing is floored at zero, an overrun is flagged.

    Attributes:
        scope: the ledger scope.
        budget: the scope's own limits.
        spent: what this session charged (input and output tokens, USD, tool calls).
        committed: what the scope has committed in all, this session and any other.
        reserved: holds not yet committed or released.
        remaining: limit minus holds minus commits, over the scope and its ancestors (signed;
            ``None``: unlimited).
        overrun: the scope committed more than a limit.
        calls: calls charged by this session.
        failed: calls that raised before their usage was known, charged at their cap.
        unmetered: replies without usage, charged at their cap.
    """

    model_config = _STRICT

    scope: str
    budget: Budget
    spent: Spend
    committed: Amount
    reserved: Amount
    remaining: dict[Resource, float | None]
    overrun: bool
    calls: int
    failed: int
    unmetered: int


class BudgetSession:
    """One budget, spent one call at a time, from one ledger scope.

    Args:
        budget: the scope's limits. Without a ledger it is required (the session keeps its own
            in-memory ledger); with one, it gives a new scope its limits, must match those of a
            scope that has them (a shared budget is never replaced by accident), and without it
            the scope must already have them.
        ledger: a shared ledger (SQLite, PostgreSQL), so that many threads, processes or
            machines spend from one budget.
        scope: where to spend, e.g. ``"acme/bob/thread-42"`` (default ``"run"``; required
            with a ledger). A reservation must fit in the scope and every ancestor.
        controller: plans the pending steps (default: a `Controller` with a `PriorPredictor`,
            which is then also the default ``learner``).
        learner: told each charged step's outcome when its success is known.
        on_exhausted: what `decide` does when nothing fits (see `OnExhausted`): ``"error"``
            raises, ``"ask"`` asks ``ask`` for more and plans again with what it grants; with
            ``"degrade"`` and ``"end"`` the exhausted skip is the caller's to act on.
        ask: asks a human for more budget (LangGraph's ``interrupt`` in the integrations):
            called with a `BudgetQuestion`; returns the extra, or ``None``.
        ttl: seconds a hold lasts if the worker dies before charging it.
        retries: times a reservation refused because another call took the budget first is
            tried again with what is left then.
        run_id: names the run on its spans.
        tracer_provider: where each call's ``roi.decision`` span goes (default: global).
        meter_provider: where the metrics go (default: global).

    Raises:
        InvalidValueError: on a missing budget or scope, or a bad setting.
    """

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        ledger: Ledger | None = None,
        scope: str | None = None,
        controller: Controller | None = None,
        learner: Learner | None = None,
        on_exhausted: OnExhausted = "degrade",
        ask: Callable[[BudgetQuestion], Budget | None] | None = None,
        ttl: float = 600.0,
        retries: int = 5,
        run_id: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if retries < 0:
            raise InvalidValueError("retries", f"must be >= 0, got {retries}")
        if budget is not None:
            check_budget(budget)
        if ledger is None:
            if budget is None:
                raise InvalidValueError("budget", "a session without a ledger needs a budget")
            ledger = MemoryLedger()
        elif scope is None:
            raise InvalidValueError("scope", "a ledger needs the scope to spend from")
        self.ledger = ledger
        self.scope = check_scope(scope or "run")
        if budget is not None:
            self.ensure_scope(ledger, self.scope, budget)
        limits = ledger.balance(self.scope).budget  # UnknownScope when it has none
        if budget is not None and (limits.tokens, limits.usd, limits.tool_calls) != (
            budget.tokens,
            budget.usd,
            budget.tool_calls,
        ):
            msg = (
                f"scope {self.scope!r} already has limits {limits.model_dump(exclude={'scope'})}:"
                " pass no budget to spend from them, or change them with ledger.set_budget"
            )
            raise InvalidValueError("budget", msg)
        self.budget = Budget(tokens=limits.tokens, usd=limits.usd, tool_calls=limits.tool_calls)
        self.controller, self.learner = _with_prior(controller, learner)
        self.on_exhausted = check_on_exhausted(on_exhausted)
        if self.on_exhausted == "ask" and ask is None:
            raise InvalidValueError("ask", "on_exhausted='ask' needs a way to ask")
        self.ask = ask
        self.ttl = check_ttl(ttl)
        self.retries = retries
        self.run_id = run_id
        self._trace = RunTrace(
            self.budget,
            resource=self.controller.resource,
            quantile=self.controller.quantile,
            run_id=run_id,
            scope=self.scope,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._lock = threading.Lock()
        self._hint = threading.local()
        self._spent = Spend()
        self._by_step: dict[str, Spend] = {}
        self._charged: set[str] = set()
        self._tool_turns: dict[str, DecisionTrace] = {}  # open tool-call spans, by call id
        self._calls = self._failed = self._unmetered = 0

    @staticmethod
    def ensure_scope(ledger: Ledger, scope: str, budget: Budget) -> None:
        """Give ``scope`` the limits of ``budget`` unless it already has limits."""
        try:
            ledger.balance(scope)
        except UnknownScope:
            ledger.set_budget(ScopeBudget(scope=scope, **budget.model_dump()))

    def grow(self, extra: Budget) -> Budget:
        """Add ``extra`` to the scope's limits (a human granted more); the new limits.

        Only the resources the scope limits grow; an unlimited one stays unlimited.
        """
        extra = Budget.model_validate(extra)
        grown: dict[str, float] = {
            r: limit + (extra.get(r) or 0)
            for r in RESOURCES
            if (limit := self.budget.get(r)) is not None
        }
        budget = Budget.model_validate(grown)  # out of range: raised before anything changes
        limits = self.ledger.balance(self.scope).budget  # its period stays
        self.ledger.set_budget(ScopeBudget.model_validate({**limits.model_dump(), **grown}))
        self.budget = budget
        self._trace.grow(budget)
        return budget

    # -- what is left -------------------------------------------------------------------------

    def remaining(self) -> Budget:
        """What a new reservation could take now (the scope's and its ancestors' least)."""
        return self.ledger.balance(self.scope).as_budget()

    async def aremaining(self) -> Budget:
        """Async `remaining`."""
        return (await self.ledger.abalance(self.scope)).as_budget()

    def spent_on(self, step_id: str) -> Spend:
        """What this run charged for ``step_id`` (every attempt included; since `finish`)."""
        with self._lock:
            return self._by_step.get(step_id, Spend())

    def restore(self, spent: Spend) -> None:
        """Take up a thread's spend so far as this session's (it was charged before it).

        For a session made again for a thread whose spend the ledger already holds: what it
        reports starts from there rather than from nothing. Charges nothing.
        """
        with self._lock:
            if spent.tokens > self._spent.tokens or spent.usd > self._spent.usd:
                self._spent = spent

    @property
    def spent(self) -> Spend:
        """What this session charged in all."""
        with self._lock:
            return self._spent

    def run_trace(self) -> RunTrace:
        """The run's trace, its ``roi.plan`` span open: every call's decision span is a child.

        The span opens with the run's first call and stays open until `finish`, so a run that
        goes on across many graph nodes is one trace.
        """
        self._trace.start()
        return self._trace

    def finish(self) -> None:
        """The run is over: close its ``roi.plan`` span with what it spent and decided.

        The session's next call starts another run (another trace) in the same scope, with the
        same run id: a thread's invocations, one trace each; `spent_on` starts afresh, so a
        later run's step of the same name is its own.
        """
        self._trace.end()
        with self._lock:
            self._by_step.clear()

    def report(self) -> BudgetReport:
        """Spent, budget, what is left (signed) and whether the scope overran."""
        balance = self.ledger.balance(self.scope)
        overrun = any(
            (limit := self.budget.get(r)) is not None and balance.committed.get(r) > limit + 1e-9
            for r in RESOURCES
        )
        with self._lock:
            return BudgetReport(
                scope=self.scope,
                budget=self.budget,
                spent=self._spent,
                committed=balance.committed,
                reserved=balance.reserved,
                remaining=balance.remaining,
                overrun=overrun,
                calls=self._calls,
                failed=self._failed,
                unmetered=self._unmetered,
            )

    # -- plan -------------------------------------------------------------------------------

    def decide(
        self, pending: Sequence[Step], forecasts: Sequence[Forecast] | None = None
    ) -> Decision:
        """Plan the pending steps with what is left; the first step's decision.

        Raises:
            BudgetExceeded: when no option of the first step fits and ``on_exhausted`` is
                ``"error"`` (the figures: what is left, what its cheapest option needs).
            InvalidValueError: no pending steps, or no forecasts and no predictor.
        """
        if not pending:
            raise InvalidValueError("pending", "no pending steps")
        if forecasts is None and self.controller.predictor is not None:
            # Once: for the plan, a re-plan after asking, and the figures of running out.
            forecasts = self.controller.predictor.predict(pending)
        left = self.remaining()
        decision = self._planned(self.controller.plan(pending, left, forecasts=forecasts))
        if self._asked(pending[0], decision, left):
            left = self.remaining()
            decision = self._planned(self.controller.plan(pending, left, forecasts=forecasts))
        self._hint.left = left
        return self._exhausted(pending[0], decision, left)

    async def adecide(
        self, pending: Sequence[Step], forecasts: Sequence[Forecast] | None = None
    ) -> Decision:
        """Async `decide` (awaits the predictor and the ledger)."""
        if not pending:
            raise InvalidValueError("pending", "no pending steps")
        if forecasts is None and self.controller.predictor is not None:
            forecasts = await self.controller.predictor.apredict(pending)
        left = await self.aremaining()
        decision = self._planned(await self.controller.aplan(pending, left, forecasts=forecasts))
        if self._asked(pending[0], decision, left):
            left = await self.aremaining()
            plan = await self.controller.aplan(pending, left, forecasts=forecasts)
            decision = self._planned(plan)
        self._hint.left = left
        return self._exhausted(pending[0], decision, left)

    def _planned(self, plan: Plan) -> Decision:
        """The plan's first decision; the plan is an event on the run's span (opened here)."""
        self.run_trace().planned(plan)
        decision = plan.next
        assert decision is not None
        return decision

    def _asked(self, step: Step, decision: Decision, left: Budget) -> bool:
        """Ask for more when the step cannot be paid for; whether more was granted."""
        if not (decision.exhausted and self.on_exhausted == "ask" and self.ask is not None):
            return False
        needs = _budget_of(decision.needs)
        question = BudgetQuestion(
            question=f"The budget cannot pay for step {step.id!r}. Add to it?",
            scope=self.scope,
            step=step.id,
            options=[o.name for o in step.options],
            needs=needs,
            remaining=left,
            shortfall=_budget_of(
                {r: max(v - (left.get(r) or 0.0), 0.0) for r, v in decision.needs.items()}
            ),
            prompt_tokens=step.input_tokens,
            reason=decision.reason,
        )
        while True:
            extra = self.ask(question)
            if extra is None:
                return False
            try:
                self.grow(extra)
            except ValueError as error:  # the grown budget is out of range: ask again
                question = question.model_copy(update={"error": str(error)})
                continue
            return True

    def _exhausted(self, step: Step, decision: Decision, left: Budget) -> Decision:
        if not (decision.exhausted and self.on_exhausted == "error"):
            return decision
        resource = self.controller.resource
        raise BudgetExceeded(
            resource=resource,
            scope=self.scope,
            limit=float(left.get(resource) or 0.0),
            requested=decision.needs.get(resource, math.inf),
        )

    def summary(
        self, decisions: Sequence[Decision] = (), labels: Mapping[str, str] | None = None
    ) -> str:
        """What the run did with its budget, in words: for people, when a run stops.

        Args:
            decisions: the run's decisions (each step's, in order); the skipped ones are
                named, and those the budget could not pay for say what they would need.
            labels: how to name steps for people, by id (default: their ids).

        Example:
            >>> session = BudgetSession(Budget(tokens=1_000))
            >>> _ = session.charge(Spend(input_tokens=300, output_tokens=600), step_id="s1")
            >>> out = Decision.skip("s2", "skip: no option fits", exhausted=True)
            >>> print(session.summary([out.model_copy(update={"needs": {"tokens": 350.0}})]))
            Spent 900 of 1,000 tokens in 1 call. The budget ran out before s2: it needs about 350 tokens, 100 are left (add at least 250 tokens to run it).
        """  # noqa: E501
        report = self.report()
        spent = ", ".join(
            f"{_amount(r, report.committed.get(r), bare=True)} of {_amount(r, limit)}"
            for r in RESOURCES
            if (limit := report.budget.get(r)) is not None
        )
        calls = f"{report.calls} call{'' if report.calls == 1 else 's'}"
        lines = [f"Spent {spent} in {calls}."]
        names = dict(labels or {})
        skipped = [
            names.get(d.step_id, d.step_id) for d in decisions if d.skipped and not d.exhausted
        ]
        if skipped:
            lines.append(f"Skipped as not worth their cost: {', '.join(skipped)}.")
        out = [d for d in decisions if d.exhausted]
        if out:
            resource = self.controller.resource
            needs = sum(d.needs.get(resource, 0.0) for d in out)
            left = max(report.remaining.get(resource) or 0.0, 0.0)
            them = "it" if len(out) == 1 else "them"
            steps = ", ".join(names.get(d.step_id, d.step_id) for d in out)
            lines.append(
                f"The budget ran out before {steps}: {them} "
                f"{'needs' if len(out) == 1 else 'need'} about {_amount(resource, needs)}, "
                f"{_amount(resource, left, bare=True)} "
                f"{'is' if resource == 'usd' or math.ceil(left - 1e-9) == 1 else 'are'} "
                f"left (add at least {_amount(resource, max(needs - left, 0.0))} to run {them})."
            )
        return " ".join(lines)

    # -- reserve, charge, release -------------------------------------------------------------

    def _hold_for(
        self,
        decision: Decision | None,
        option: Option,
        prompt: PromptCount,
        left: Budget,
        call_id: str,
        tool_calls: int,
    ) -> tuple[Hold, Amount]:
        cap = decision.cap if decision is not None else Cap()
        narrowed = Cap(
            tokens=_least(cap.tokens, left.tokens),
            usd=_least(cap.usd, left.usd),
            tool_calls=_least(cap.tool_calls, left.tool_calls),
        )
        max_tokens: int | None = None
        if (
            option.max_tokens is not None
            or narrowed.tokens is not None
            or (narrowed.usd is not None and option.output_price > 0)
        ):
            max_tokens = narrowed.max_output_tokens(prompt.tokens, option)
            if max_tokens <= 0:
                # Name what binds: the step's cap from the plan, or what the scope has left.
                by_step = narrowed != Cap(
                    tokens=left.tokens, usd=left.usd, tool_calls=left.tool_calls
                )
                where = (
                    f"{self.scope}, the cap of step {decision.step_id!r}"
                    if decision and by_step
                    else self.scope
                )
                raise self._refused(narrowed, prompt.tokens, option, where)
        if narrowed.tool_calls is not None and tool_calls > narrowed.tool_calls:
            raise BudgetExceeded(
                resource="tool_calls",
                scope=self.scope,
                limit=narrowed.tool_calls,
                requested=tool_calls,
            )
        amount = Amount(
            tokens=prompt.tokens + (max_tokens or 0),
            usd=option.usd(prompt.tokens, max_tokens or 0),
            tool_calls=tool_calls,
        )
        hold = Hold(
            call_id=call_id,
            step_id=decision.step_id if decision is not None else call_id,
            option=option.name,
            reservation="",
            amount=amount,
            prompt_tokens=prompt.tokens,
            counted_by=prompt.counted_by,
            max_tokens=max_tokens,
        )
        return hold, amount

    @staticmethod
    def _refused(cap: Cap, prompt: int, option: Option, where: str) -> BudgetExceeded:
        if cap.usd is not None and option.priced and (cap.tokens is None or cap.tokens > prompt):
            return BudgetExceeded(
                resource="usd", scope=where, limit=cap.usd, requested=option.usd(prompt, 1)
            )
        limit = cap.tokens if cap.tokens is not None else 0
        return BudgetExceeded(resource="tokens", scope=where, limit=limit, requested=prompt + 1)

    def _take_hint(self) -> Budget | None:
        """What `decide` just read in this thread, used once to size the next hold.

        It saves a ledger read per turn and is safe when stale: the ledger still refuses a hold
        that does not fit, and a refusal is tried again with a fresh balance.
        """
        left: Budget | None = getattr(self._hint, "left", None)
        self._hint.left = None
        return left

    def reserve(
        self,
        decision: Decision | None,
        option: Option,
        *,
        prompt: PromptCount | int = 0,
        call_id: str | None = None,
        tool_calls: int = 0,
    ) -> Hold:
        """Hold what the call may spend before it is sent.

        The call's cap is the decision's (none: what is left), narrowed to what the scope has
        left now; ``max_tokens`` is that cap less the prompt, never more than the option's own.

        Args:
            decision: the step's decision (``None``: the call is capped by what is left).
            option: the option the call runs (its ``max_tokens`` and prices).
            prompt: the prompt's size (a `PromptCount` says how it was counted).
            call_id: the call's id; reserving again with it returns the same hold.
            tool_calls: tool calls the call will make.

        Raises:
            BudgetExceeded: the prompt alone does not fit (nothing may be sent), or other calls
                took the budget first ``retries`` times.
            InvalidValueError: the decision is a skip, or chose another option.
        """
        key = call_id  # a fresh id needs no look-up of an earlier hold
        prompt, call_id = self._check(decision, option, prompt, call_id)
        hint = self._take_hint()
        last = self.retries + (hint is not None)
        for attempt in range(last + 1):
            try:
                left = hint or self.remaining()
                hold, amount = self._hold_for(decision, option, prompt, left, call_id, tool_calls)
                reservation = self.ledger.reserve(
                    self.scope, amount, ttl=self.ttl, idempotency_key=key
                )
            except BudgetExceeded:
                if attempt == last:
                    raise
                # Another call took the budget between the balance and the hold, or the hint
                # was stale: again, with what is left now.
                hint = None
                continue
            return hold.model_copy(update={"reservation": reservation.id})
        raise AssertionError("unreachable")  # pragma: no cover

    async def areserve(
        self,
        decision: Decision | None,
        option: Option,
        *,
        prompt: PromptCount | int = 0,
        call_id: str | None = None,
        tool_calls: int = 0,
    ) -> Hold:
        """Async `reserve`."""
        key = call_id  # a fresh id needs no look-up of an earlier hold
        prompt, call_id = self._check(decision, option, prompt, call_id)
        hint = self._take_hint()
        last = self.retries + (hint is not None)
        for attempt in range(last + 1):
            try:
                left = hint or await self.aremaining()
                hold, amount = self._hold_for(decision, option, prompt, left, call_id, tool_calls)
                reservation = await self.ledger.areserve(
                    self.scope, amount, ttl=self.ttl, idempotency_key=key
                )
            except BudgetExceeded:
                if attempt == last:
                    raise
                hint = None
                continue
            return hold.model_copy(update={"reservation": reservation.id})
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _check(
        decision: Decision | None, option: Option, prompt: PromptCount | int, call_id: str | None
    ) -> tuple[PromptCount, str]:
        if decision is not None and decision.skipped:
            raise InvalidValueError("decision", f"step {decision.step_id!r} is skipped: no call")
        if decision is not None and option.name != decision.option:
            msg = f"decision chose {decision.option!r}, not {option.name!r}"
            raise InvalidValueError("option", msg)
        if isinstance(prompt, bool) or not isinstance(prompt, int | PromptCount):
            raise InvalidValueError("prompt", f"expected tokens or a PromptCount, got {prompt!r}")
        if isinstance(prompt, int):
            if prompt < 0:
                raise InvalidValueError("prompt", f"must be >= 0, got {prompt}")
            prompt = PromptCount(tokens=prompt, counted_by="caller", exact=False)
        return prompt, call_id or uuid.uuid4().hex

    def _settled(self, hold: Hold, spend: Spend, *, failed: bool, unmetered: bool) -> None:
        with self._lock:
            if hold.call_id in self._charged:
                return
            self._charged.add(hold.call_id)
            self._spent = self._spent + spend
            self._by_step[hold.step_id] = self._by_step.get(hold.step_id, Spend()) + spend
            self._calls += 1
            self._failed += failed
            self._unmetered += unmetered
            turn = self._tool_turns.pop(hold.call_id, None)
        if turn is not None:
            turn.record(spend)

    @staticmethod
    def _at_cap(hold: Hold) -> Spend:
        return Spend(
            input_tokens=hold.prompt_tokens,
            output_tokens=hold.max_tokens or 0,
            usd=hold.amount.usd,
            tool_calls=hold.amount.tool_calls,
        )

    def commit(self, hold: Hold, spend: Spend | None, *, failed: bool = False) -> Spend:
        """Charge what the call really spent (``None``: unknown, charged at its cap), once.

        Committing a hold again with the same spend changes nothing. More than was held is
        recorded as is and flagged by the ledger: spend that happened is never dropped. A
        database that is unreachable or drops the connection (a restart) is tried 4 more times
        over about 4 s beside the ledger's own waits for a connection (a commit is safe to
        repeat); after that `LedgerUnavailable` is raised, and this same call may be made again
        later.
        """
        charged = spend if spend is not None else self._at_cap(hold)
        for wait in (*_COMMIT_BACKOFF, None):
            try:
                self.ledger.commit(hold.reservation, Amount.of(charged))
                break
            except LedgerUnavailable:
                if wait is None:
                    raise
                time.sleep(wait)
        self._settled(hold, charged, failed=failed, unmetered=spend is None and not failed)
        return charged

    async def acommit(self, hold: Hold, spend: Spend | None, *, failed: bool = False) -> Spend:
        """Async `commit`."""
        charged = spend if spend is not None else self._at_cap(hold)
        for wait in (*_COMMIT_BACKOFF, None):
            try:
                await self.ledger.acommit(hold.reservation, Amount.of(charged))
                break
            except LedgerUnavailable:
                if wait is None:
                    raise
                await asyncio.sleep(wait)
        self._settled(hold, charged, failed=failed, unmetered=spend is None and not failed)
        return charged

    def release(self, hold: Hold) -> None:
        """Free a hold whose call was never sent."""
        self.ledger.release(hold.reservation)
        self._released(hold)

    async def arelease(self, hold: Hold) -> None:
        """Async `release`."""
        await self.ledger.arelease(hold.reservation)
        self._released(hold)

    def _released(self, hold: Hold) -> None:
        with self._lock:
            turn = self._tool_turns.pop(hold.call_id, None)
        if turn is not None:
            turn.record(Spend())

    def _hold_amount(self, amount: Amount, *, step_id: str, call_id: str, option: str) -> Hold:
        reservation = self.ledger.reserve(self.scope, amount, ttl=self.ttl, idempotency_key=call_id)
        return Hold(
            call_id=call_id,
            step_id=step_id,
            option=option,
            reservation=reservation.id,
            amount=reservation.amount,
            prompt_tokens=0,
            counted_by="caller",
            max_tokens=None,
        )

    def charge(self, spend: Spend, *, step_id: str, call_id: str | None = None) -> Spend:
        """Record a spend that happened without a hold (a call made outside the session).

        It is held and committed at once; when it no longer fits, it is committed all the same
        (against a hold of nothing, which always fits) and flagged as an over-commit: spend
        that happened is never lost.
        """
        call_id = call_id or uuid.uuid4().hex
        try:
            hold = self._hold_amount(Amount.of(spend), step_id=step_id, call_id=call_id, option="")
        except BudgetExceeded:
            hold = self._hold_amount(Amount(), step_id=step_id, call_id=call_id, option="")
        return self.commit(hold, spend)

    def reserve_tool_calls(
        self, n: int, *, step_id: str, call_id: str | None = None, tools: Sequence[str] = ()
    ) -> Hold:
        """Hold ``n`` tool calls before they run; `commit` what ran (or `release`).

        The turn is traced as a decision of its own (option ``tools``, kind TOOL) from here
        until its commit or release.

        Args:
            n: the calls to hold.
            step_id: the step they are charged to.
            call_id: an id for the hold (idempotent); a fresh one by default.
            tools: the tools' names, in order, for the trace.

        Raises:
            BudgetExceeded: fewer than ``n`` are left (an event on the run's span).
        """
        call_id = call_id or uuid.uuid4().hex
        try:
            hold = self._hold_amount(
                Amount(tool_calls=n), step_id=step_id, call_id=call_id, option="tools"
            )
        except BudgetExceeded as error:
            self._trace.refused(error)
            raise
        turn = self.run_trace().tool_calls(step_id, n, tools)
        with self._lock:
            self._tool_turns[call_id] = turn
        return hold

    def record(
        self,
        step: Step,
        decision: Decision,
        spend: Spend,
        *,
        success: float | None = None,
        truncated: bool = False,
    ) -> None:
        """Trace a decision whose calls were not made through `call` (a skip, a settled step)."""
        with self.run_trace().decision(step, decision=decision) as traced:
            traced.record(spend, success=success, truncated=truncated)

    def learn(
        self, step: Step, option: str, spend: Spend, success: float | None, truncated: bool
    ) -> None:
        """Tell the learner a step's outcome (``success`` None: ungraded, its cost only)."""
        if self.learner is not None:
            self.learner.observe(step, option, spend, success, truncated=truncated)

    # -- the turn as a context manager ----------------------------------------------------------

    def call(
        self,
        decision: Decision | None,
        option: Option,
        *,
        prompt: PromptCount | int = 0,
        step: Step | None = None,
        call_id: str | None = None,
        tool_calls: int = 0,
    ) -> Call:
        """One call under the budget: reserved on entry, charged once, traced.

        Inside the block send the call with ``call.max_tokens`` and `Call.charge` its real
        spend. Leaving the block without a charge (an exception, a retry) commits the hold at
        its cap: the server may have spent it. A reservation refused on entry raises
        `BudgetExceeded` there, before anything is sent.
        """
        return Call(self, decision, option, prompt, step, call_id, tool_calls)


class Call:
    """One reserved call: `charge` its real spend; see `BudgetSession.call`."""

    def __init__(
        self,
        session: BudgetSession,
        decision: Decision | None,
        option: Option,
        prompt: PromptCount | int,
        step: Step | None,
        call_id: str | None,
        tool_calls: int,
    ) -> None:
        self.session = session
        self.decision = decision
        self.option = option
        self.prompt = prompt
        self.step = step
        self.call_id = call_id
        self.tool_calls = tool_calls
        self.hold: Hold | None = None
        self.spend: Spend | None = None
        self._traced: DecisionTrace | None = None
        self._activation: Any = None

    @property
    def max_tokens(self) -> int | None:
        """The ``max_tokens`` to send the call with (``None``: nothing limits it)."""
        assert self.hold is not None, "use the call inside its with block"
        return self.hold.max_tokens

    def _open(self, hold: Hold) -> None:
        self.hold = hold
        step = self.step or Step(id=hold.step_id, options=(self.option,))
        decision = self.decision or Decision(
            step_id=step.id,
            option=self.option.name,
            cap=Cap(tokens=hold.amount.tokens, usd=hold.amount.usd),
            expected_value=0.0,
            expected_cost={},
            reason="no plan: capped at what is left",
        )
        traced = self.session.run_trace().decision(step, decision=decision)
        traced.span.set_attributes(
            {
                names.PROMPT_TOKENS: hold.prompt_tokens,
                names.PROMPT_COUNTED_BY: hold.counted_by,
                names.GEN_AI_REQUEST_MAX_TOKENS: -1 if hold.max_tokens is None else hold.max_tokens,
            }
        )
        self._traced = traced
        # The call's own spans (an LLM instrumentation's) nest under its decision.
        self._activation = trace.use_span(traced.span, end_on_exit=False)
        self._activation.__enter__()

    def _refused(self, error: BudgetExceeded) -> None:
        span = trace.get_current_span()
        span.add_event(names.EVENT_REFUSED, {names.RESOURCE: error.resource})
        self.session._trace.refused(error)

    def __enter__(self) -> Call:
        try:
            hold = self.session.reserve(
                self.decision,
                self.option,
                prompt=self.prompt,
                call_id=self.call_id,
                tool_calls=self.tool_calls,
            )
        except BudgetExceeded as error:
            self._refused(error)
            raise
        self._open(hold)
        return self

    async def __aenter__(self) -> Call:
        try:
            hold = await self.session.areserve(
                self.decision,
                self.option,
                prompt=self.prompt,
                call_id=self.call_id,
                tool_calls=self.tool_calls,
            )
        except BudgetExceeded as error:
            self._refused(error)
            raise
        self._open(hold)
        return self

    def charge(
        self, spend: Spend | None, *, success: float | None = None, truncated: bool = False
    ) -> Spend:
        """Commit the call's real spend; tell the learner when ``success`` is known.

        ``None``: the reply carried no usage, so it is charged at its cap and the span says so.
        """
        assert self.hold is not None, "use the call inside its with block"
        charged = self.session.commit(self.hold, spend)
        self._close(spend, charged, success, truncated)
        return charged

    async def acharge(
        self, spend: Spend | None, *, success: float | None = None, truncated: bool = False
    ) -> Spend:
        """Async `charge`."""
        assert self.hold is not None, "use the call inside its with block"
        charged = await self.session.acommit(self.hold, spend)
        self._close(spend, charged, success, truncated)
        return charged

    def _close(
        self, spend: Spend | None, charged: Spend, success: float | None, truncated: bool
    ) -> None:
        self.spend = charged
        traced = self._traced
        assert traced is not None
        if spend is None:
            traced.span.add_event(names.EVENT_USAGE_MISSING, {names.REASON: "charged at cap"})
        traced.record(charged, success=success, truncated=truncated)
        if success is not None and self.step is not None:
            self.session.learn(self.step, self.option.name, charged, success, truncated)

    def _unsettled(self, exc: BaseException | None) -> Hold | None:
        """The hold when the block ended without a charge (the span records why), else None.

        A call the server refused before generating anything (an HTTP 4xx other than 408 on
        the error, as the OpenAI and httpx clients carry it) is charged nothing.
        """
        if self.spend is not None or self.hold is None or self._traced is None:
            return None
        if exc is not None:
            self._traced.span.record_exception(exc)
            if _refused_by_server(exc):
                self._close(Spend(), self.session.commit(self.hold, Spend()), None, False)
                return None
        self._traced.span.add_event(names.EVENT_USAGE_MISSING, {names.REASON: "failed attempt"})
        return self.hold

    def _end(self, charged: Spend | None, exc_info: _ExcInfo) -> None:
        if self._traced is None:
            return
        self._activation.__exit__(None, None, None)
        if charged is not None:
            self.spend = charged
            self._traced.record(charged)
        self._traced.__exit__(*exc_info)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        hold = self._unsettled(exc)
        charged = self.session.commit(hold, None, failed=True) if hold is not None else None
        self._end(charged, (exc_type, exc, traceback))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        hold = self._unsettled(exc)
        charged = await self.session.acommit(hold, None, failed=True) if hold else None
        self._end(charged, (exc_type, exc, traceback))


class SessionPool:
    """One `BudgetSession` per run or thread, each in its own scope under ``scope``.

    What the LangGraph nodes and the middleware keep: a graph or an agent serves many threads,
    and each spends from ``{scope}/{thread}`` in one ledger (in memory by default), with its own
    limits and the limits of every scope above it.

    Sessions are kept for the ``max_sessions`` threads used last; a thread's session made again
    after that reads its limits and spend from the ledger (its per-step detail starts afresh), so
    a server that sees ever new threads does not grow without end.

    Args:
        ledger: where the scopes live (default: a new in-memory ledger).
        scope: the scope above the runs (a tenant, a user; default ``"run"``).
        max_sessions: sessions kept in memory.
        **settings: the sessions' settings (`BudgetSession`'s keyword arguments).
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        scope: str = "run",
        max_sessions: int = 4096,
        **settings: Any,
    ) -> None:
        if max_sessions < 1:
            raise InvalidValueError("max_sessions", f"must be >= 1, got {max_sessions}")
        self.ledger = ledger or MemoryLedger()
        self.scope = check_scope(scope)
        self.max_sessions = max_sessions
        controller, learner = _with_prior(settings.get("controller"), settings.get("learner"))
        self.settings = {**settings, "controller": controller, "learner": learner}
        self._sessions: OrderedDict[str, BudgetSession] = OrderedDict()
        self._lock = threading.Lock()

    def scope_of(self, thread: str | None) -> str:
        """The scope of a thread (a fresh one when there is no thread id)."""
        name = str(thread or uuid.uuid4().hex).replace("/", "_")
        return f"{self.scope}/{name}"

    def get(self, scope: str, budget: Budget, *, spent: Spend | None = None) -> BudgetSession:
        """The session of ``scope``.

        A new scope gets the limits of ``budget``; an existing one keeps its own. ``spent``:
        what the run's checkpointed state says it has spent. A session made here takes it up:
        charged first when the ledger does not know it (a restart with the in-memory ledger:
        the budget is not spent twice), else only reported from.
        """
        with self._lock:
            session = self._sessions.get(scope)
            if session is not None:
                self._sessions.move_to_end(scope)
                return session
            BudgetSession.ensure_scope(self.ledger, scope, budget)
            session = self._sessions[scope] = BudgetSession(
                ledger=self.ledger, scope=scope, run_id=scope, **self.settings
            )
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            if spent is not None and spent != Spend():
                if session.report().committed.tokens:
                    session.restore(spent)
                else:
                    session.charge(spent, step_id="restored")
            return session


def _with_prior(
    controller: Controller | None, learner: Learner | None
) -> tuple[Controller, Learner | None]:
    """A controller, by default one whose `PriorPredictor` also learns from the outcomes."""
    if controller is not None:
        return controller, learner
    prior = PriorPredictor()
    return Controller(predictor=prior), learner or prior


def _budget_of(amounts: dict[Resource, float]) -> Budget:
    """A `Budget` of ``amounts`` (counts rounded up: what it takes, never less)."""
    return Budget.model_validate(
        {r: v if r == "usd" else math.ceil(v - 1e-9) for r, v in amounts.items()}
    )


def _amount(resource: Resource, value: float, *, bare: bool = False) -> str:
    """``value`` of ``resource`` for people: ``1,294 tokens``, ``$0.0412``, ``3 tool calls``."""
    if resource == "usd":
        return f"${value:,.4f}"
    count = math.ceil(value - 1e-9)
    unit = resource.replace("_", " ")
    return f"{count:,}" if bare else f"{count:,} {unit.removesuffix('s') if count == 1 else unit}"


def _refused_by_server(error: BaseException) -> bool:
    """Whether the server answered the request with a 4xx (not 408): nothing was generated."""
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status != 408


def _least(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
