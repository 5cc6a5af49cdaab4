"""Trigger nodes. A run starts at the trigger that fired; its output is the trigger payload the
run was given (the manual run's input, the schedule slot, the webhook request)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from jsonschema import Draft202012Validator, SchemaError

from app.engine.nodes.base import NodeContext, NodeOutput, NodeType, ParamProblems
from app.engine.problems import Problem, join_path

CRON_NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                  "@hourly")


def pass_payload(ctx: NodeContext) -> NodeOutput:
    return NodeOutput(ctx.input)


def _check_schedule(params: dict) -> ParamProblems:
    cron = params["cron"].strip()
    five_fields = len(cron.split()) == 5
    if not (five_fields or cron in CRON_NICKNAMES) or not croniter.is_valid(cron):
        yield ("cron",), ("is not a valid cron expression (five fields: minute hour "
                          "day-of-month month day-of-week, e.g. '*/15 * * * *')")
    try:
        ZoneInfo(params.get("timezone", "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        yield ("timezone",), "is not a known time zone (e.g. 'Europe/Paris', 'UTC')"


def _check_webhook(params: dict) -> ParamProblems:
    if "schema" in params:
        try:
            Draft202012Validator.check_schema(params["schema"])
        except SchemaError as exc:
            yield ("schema", *exc.absolute_path), f"is not a valid JSON Schema: {exc.message}"


def trigger_payload_schema_errors(params: dict, payload: Any) -> list[Problem]:
    """How a webhook's parsed JSON body fails the trigger's ``schema`` param (none: [])."""
    schema = params.get("schema")
    if schema is None:
        return []
    validator = Draft202012Validator(schema)
    return [Problem(join_path(*error.absolute_path), error.message)
            for error in sorted(validator.iter_errors(payload),
                                   key=lambda e: [str(part) for part in e.absolute_path])]


MANUAL = NodeType(
    name="trigger.manual", group="Triggers", label="Run by hand",
    description="Starts the workflow from the editor or the API; outputs the run's input.",
    params_schema={"type": "object", "additionalProperties": False, "properties": {}},
    run=pass_payload, is_trigger=True)

SCHEDULE = NodeType(
    name="trigger.schedule", group="Triggers", label="On a schedule",
    description="Starts the workflow on a cron schedule; outputs "
                '{"scheduled_for", "fired_at"} as ISO 8601 times, and "missed_slots": '
                "how many earlier slots were skipped while no clock ran.",
    params_schema={
        "type": "object", "additionalProperties": False, "required": ["cron"],
        "properties": {
            "cron": {"type": "string", "title": "Cron schedule", "format": "cron",
                     "minLength": 1, "maxLength": 200,
                     "description": "Five fields: minute hour day-of-month month "
                                    "day-of-week, e.g. '0 9 * * 1-5' for 9:00 on weekdays."},
            "timezone": {"type": "string", "title": "Time zone", "default": "UTC",
                         "description": "The IANA time zone the schedule is read in."},
        }},
    run=pass_payload, is_trigger=True, check_params=_check_schedule)

WEBHOOK = NodeType(
    name="trigger.webhook", group="Triggers", label="On a webhook",
    description="Starts the workflow when its signed URL receives a POST; outputs "
                '{"headers", "query", "body", "received_at"}.',
    params_schema={
        "type": "object", "additionalProperties": False,
        "properties": {
            "respond": {"enum": ["immediately", "when_finished"], "default": "immediately",
                        "title": "Respond",
                        "description": "Answer 202 at once, or wait and answer with the "
                                       "last node's output."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300,
                          "default": 30, "title": "Response timeout (s)",
                          "description": "With 'when_finished': answer 504 after this long "
                                         "(the run goes on)."},
            "schema": {"type": ["object", "boolean"], "title": "Payload schema",
                       "format": "json",
                       "description": "Optional JSON Schema the request body must match "
                                      "(else 400)."},
            "auth": {"enum": ["jobsprint", "stripe", "github", "slack", "none"],
                     "default": "jobsprint", "title": "Signature",
                     "description": "How requests prove they come from the sender."},
        }},
    run=pass_payload, is_trigger=True, check_params=_check_webhook)

NODE_TYPES = (MANUAL, SCHEDULE, WEBHOOK)
