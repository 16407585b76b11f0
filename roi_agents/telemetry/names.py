"""Every span, attribute, event and metric name roi-agents emits, in one place.

``gen_ai.*`` names are the OpenTelemetry GenAI semantic conventions' (written out here so the
core needs only the OpenTelemetry API; a test checks them against the constants of
``opentelemetry-semantic-conventions``, which the contrib GenAI instrumentations use); ours
live under ``roi.*``.
"""

from __future__ import annotations

# Spans
SPAN_PLAN = "roi.plan"
"""One agent run under a budget; its decisions are its children."""
SPAN_DECISION = "roi.decision"
"""One step's decision, from choice to outcome."""

# GenAI semantic conventions
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
"""The ``max_tokens`` a call was sent with (-1: nothing limited it)."""
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
"""``invoke_agent`` on a run's span, ``chat`` on a call's."""
OPERATION_RUN = "invoke_agent"
OPERATION_CALL = "chat"
OPERATION_TOOLS = "execute_tool"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
"""On a turn of tool calls that ran one tool."""

# Experimental: the cost shape proposed in open-telemetry/semantic-conventions-genai#443 (not
# in a release of the conventions yet); ``roi.actual.usd`` carries the same figure.
GEN_AI_USAGE_COST_AMOUNT = "gen_ai.usage.cost.amount"
GEN_AI_USAGE_COST_CURRENCY = "gen_ai.usage.cost.currency"
GEN_AI_USAGE_COST_SOURCE = "gen_ai.usage.cost.source"
"""``local``: priced here, from the option's list prices."""

# OpenInference (Arize Phoenix reads it to show a span as a chain, an LLM call, a tool)
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
KIND_RUN = "CHAIN"
KIND_CALL = "LLM"
KIND_TOOLS = "TOOL"
INPUT_VALUE = "input.value"
"""A run's budget (JSON) and a call's step text: what a trace UI shows as the span's input."""
INPUT_MIME_TYPE = "input.mime_type"
OUTPUT_VALUE = "output.value"
"""A run's spend and decisions (JSON) and a decision's reason: what a trace UI shows as output."""
OUTPUT_MIME_TYPE = "output.mime_type"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
"""On a run's span: its run id (a thread's), so a trace UI groups a thread's runs as a session."""

# Run (roi.plan) attributes
RUN_ID = "roi.run.id"
SCOPE = "roi.scope"
BUDGET = "roi.budget"
"""Prefix: ``roi.budget.tokens``, ``roi.budget.usd``, ``roi.budget.tool_calls``."""
SPENT = "roi.spent"
"""Prefix, per resource, like `BUDGET`."""
UTILIZATION = "roi.budget.utilization"
"""Spent over budget of the resource planned for."""
RESOURCE = "roi.resource"
QUANTILE = "roi.plan.quantile"
RISK = "roi.plan.risk"
"""Whether a plan budgeted each step (``step``) or its total (``run``) at its quantile."""
DECISIONS = "roi.decisions"
SKIPS = "roi.skips"

# Decision (roi.decision) attributes
STEP_ID = "roi.step.id"
STEP_GROUP = "roi.step.group"
# The step's text as the learned predictor reads it (cut like its input); off with record_text.
STEP_TEXT = "roi.step.text"
OPTION = "roi.option"
OPTION_TOOLS = "tools"
"""The option of a turn of tool calls' decision (held and charged as one)."""
TOOLS = "roi.tools"
"""The tools a turn of tool calls ran, in order."""
OPTIONS_CONSIDERED = "roi.options.considered"
P_SUCCESS = "roi.forecast.p_success"
COST_MEAN = "roi.forecast.cost.mean"
COST_PLANNED = "roi.forecast.cost.planned"
"""The cost at the plan's quantile: what the plan budgeted for the step."""
CAP = "roi.cap"
"""Prefix, per resource: ``roi.cap.tokens``, ..."""
BUDGET_BEFORE = "roi.budget.before"
"""Prefix, per resource."""
BUDGET_AFTER = "roi.budget.after"
"""Prefix, per resource."""
REASON = "roi.reason"
ACTUAL_USD = "roi.actual.usd"
ACTUAL_TOOL_CALLS = "roi.actual.tool_calls"
SUCCESS = "roi.outcome.success"
TRUNCATED = "roi.outcome.truncated"
"""The step stopped at its cap: its cost is a lower bound, its success not the option's."""
PROMPT_TOKENS = "roi.prompt.tokens"
"""The prompt's size as counted before the call (tool schemas and tool-call arguments in)."""
PROMPT_COUNTED_BY = "roi.prompt.counted_by"
"""``vllm``, ``tokenizer``, ``bound`` (the byte bound) or ``caller``."""
FORECAST_ERROR = "roi.forecast.error"
"""log(actual / planned cost) of the resource planned for."""

# Events
EVENT_PLAN = "roi.plan.made"
"""A plan or a re-plan, on the run's span: one per decision the controller makes."""
PLAN_OPTIONS = "roi.plan.options"
"""The options chosen for the pending steps, in step order."""
PLAN_EXPECTED_VALUE = "roi.plan.expected_value"
PLAN_UPPER_BOUND = "roi.plan.upper_bound"
"""An upper bound on the best expected value (the LP relaxation): the gap is bounded by it."""
PLAN_COST = "roi.plan.cost"
"""The planned cost of the pending steps, in the resource planned for (at the quantile)."""
PLAN_LEFT = "roi.plan.left"
"""What was left to plan with, in that resource (-1: unlimited)."""
PLAN_SOLVER = "roi.plan.solver"
EVENT_FALLBACK = "roi.predictor.fallback"
EVENT_REFUSED = "roi.budget.refused"
EVENT_GROWN = "roi.budget.grown"
"""A person granted more (``ask``): the run's new limits, ``roi.budget.*``."""
EVENT_REASON = "roi.event.reason"
EVENT_USAGE_MISSING = "roi.usage.missing"
"""A call charged at its reserved cap: it failed after it was sent, or its reply had no usage."""
EVENT_GUARD = "roi.predictor.guard"
"""`GuardedPredictor` starts or stops serving the prior's forecast of a part."""
EVENT_PART = "roi.guard.part"
"""``success`` or ``cost``."""
EVENT_TRUSTED = "roi.guard.trusted"
"""Whether the learned forecast of that part is served from now on."""

# Metrics
METRIC_DECISIONS = "roi.decisions"
METRIC_UTILIZATION = "roi.budget.utilization"
METRIC_FORECAST_RATIO = "roi.forecast.ratio"
"""Histogram of actual / planned cost. OpenTelemetry histograms take no negative values, so the
metric records the ratio; the log error (`FORECAST_ERROR`) is on each decision span."""


def per_resource(prefix: str, resource: str) -> str:
    """``roi.cap`` + ``tokens`` -> ``roi.cap.tokens``."""
    return f"{prefix}.{resource}"
