"""The automations that catch dead runs, rerun them and report stale tables: :func:`ensure_operations`.

The YAML files beside this module (``prefect automation create --from-file`` format, ``${...}`` for the
operator's settings), applied idempotently through the client (the CLI adds a copy each time)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from string import Template
from typing import Any

import yaml
from prefect.automations import AutomationCore
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import BlockDocument
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.filters import AutomationFilter, AutomationFilterTags

from flows.errors import ConfigurationError, setting
from flows.ops.settings import OPERATIONS_DEFAULTS, CountriesSettings
from flows.transform.schema import target_table

FLOW_NAME = "countries"
AUTOMATION_TAG = "countries-pipeline"
FRESHNESS_PREFIX = f"{FLOW_NAME}: stale "

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PREFECT_DEFAULT_HEARTBEAT_SECONDS = 180  # Prefect's default when the variable is not set
MINIMUM_HEARTBEAT_SECONDS = 30  # Prefect refuses lower values


def describe_duration(delta: timedelta) -> str:
    """``90 s``, ``45 min``, ``12 h``, ``1 day``, ``36 h``: a duration as an operator reads it (whole units)."""
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and (seconds % size == 0 or seconds >= 10 * size):
            value = seconds / size
            plural = "s" if unit == "day" and value != 1 else ""
            return f"{value:.3g} {unit}{plural}"
    return f"{seconds:.3g} s"


def load(file: str, **values: Any) -> AutomationCore:
    """The automation of the YAML ``file`` with its ``${name}`` filled from ``values`` (a whole value keeps its
    type); notification texts are kept literal for the server's Jinja. ``KeyError`` for a missing value."""

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            whole = node.strip()
            if whole.startswith("${") and whole.endswith("}") and whole[2:-1] in values:
                return values[whole[2:-1]]
            return Template(node).substitute(values)
        return node

    data = fill(yaml.safe_load((Path(__file__).parent / file).read_text(encoding="utf-8")))
    for action in data.get("actions", []):
        for key in ("subject", "body"):
            if isinstance(action.get(key), str) and ("{" in action[key] or "%" in action[key]):
                action[key] = "{% raw %}" + action[key] + "{% endraw %}"
    return AutomationCore.model_validate(data)


def active_interval(deployment: DeploymentResponse) -> timedelta | None:
    """The shortest interval among the deployment's active interval schedules, or None."""
    schedules = [s.schedule for s in deployment.schedules if s.active]
    return min((s.interval for s in schedules if isinstance(getattr(s, "interval", None), timedelta)), default=None)


def heartbeat_seconds(deployment: DeploymentResponse) -> float:
    """How often the deployment's runs send a heartbeat, by its own ``env`` job variables (else Prefect's default)."""
    env = deployment.job_variables.get("env") or {}
    try:
        return max(float(env.get(HEARTBEAT_ENV)), MINIMUM_HEARTBEAT_SECONDS)
    except (TypeError, ValueError):
        return PREFECT_DEFAULT_HEARTBEAT_SECONDS


async def find_notification_block(client: PrefectClient, ref: str) -> BlockDocument:
    """The notification block ``ref`` (``NAME`` or ``TYPE-SLUG/NAME``); ``ConfigurationError`` naming those that
    exist when there is none, several, or it cannot notify."""
    slug, _, name = ref.rpartition("/")
    documents: list[BlockDocument] = []
    while page := await client.read_block_documents(offset=len(documents), limit=200, include_secrets=False):
        documents += page
    documents = [d for d in documents if not d.is_anonymous]

    def can_notify(d: BlockDocument) -> bool:
        return d.block_schema is not None and "notify" in (d.block_schema.capabilities or [])

    def label(d: BlockDocument) -> str:
        return f"{d.block_type.slug}/{d.name}" if d.block_type else str(d.name)

    notifiers = sorted(label(d) for d in documents if can_notify(d))
    known = ", ".join(notifiers) if notifiers else "none yet: create one in the UI (Blocks) or with Python"
    matches = [d for d in documents if d.name == name and (not slug or (d.block_type and d.block_type.slug == slug))]
    if not matches:
        raise ConfigurationError(
            f"no block named '{ref}' ({setting('notify_block')}): the notification blocks are: {known}"
        )
    if len(matches) > 1:
        raise ConfigurationError(
            f"several blocks are named '{name}': name one as TYPE-SLUG/NAME, one of: "
            + ", ".join(sorted(label(d) for d in matches))
        )
    (block,) = matches
    if not can_notify(block):
        raise ConfigurationError(
            f"block '{label(block)}' cannot send notifications: name a notification block, one of: {known}"
        )
    return block


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    """The automation's definition as plain Python values (sets stay sets: their order means nothing)."""
    return AutomationCore.model_validate(automation.model_dump(mode="json")).model_dump(exclude={"owner_resource"})


async def apply_automation(client: PrefectClient, wanted: AutomationCore) -> str:
    """Create or update the automation named like ``wanted``: ``created``, ``updated`` or ``unchanged``, then
    ``; removed N duplicates`` when it deleted some."""
    existing = await client.read_automations_by_name(wanted.name)
    if not existing:
        await client.create_automation(wanted)
        existing, outcome = await client.read_automations_by_name(wanted.name), "created"
    elif _comparable(existing[0]) == _comparable(wanted):
        outcome = "unchanged"
    else:
        await client.update_automation(existing[0].id, wanted)
        outcome = "updated"
    for duplicate in existing[1:]:  # two setups at once, or a create the client sent again to a busy server
        await client.delete_automation(duplicate.id)
    extra = len(existing) - 1 if outcome != "created" else 0
    return outcome + (f"; removed {extra} duplicate{'s' if extra > 1 else ''}" if extra else "")


def choices(saved: CountriesSettings) -> CountriesSettings:
    """``saved`` with the defaults for the settings not saved; ``ConfigurationError`` when one cannot work."""
    chosen = saved.model_copy(update={k: v for k, v in OPERATIONS_DEFAULTS.items() if getattr(saved, k) is None})
    if chosen.crash_after_seconds < 2 * MINIMUM_HEARTBEAT_SECONDS:
        raise ConfigurationError(
            f"{setting('crash_after')} must be at least {2 * MINIMUM_HEARTBEAT_SECONDS} s (two heartbeats of "
            f"{MINIMUM_HEARTBEAT_SECONDS} s, Prefect's shortest), got "
            f"{describe_duration(timedelta(seconds=chosen.crash_after_seconds))}"
        )
    if not math.isfinite(chosen.stale_after_intervals) or chosen.stale_after_intervals <= 1:
        raise ConfigurationError(
            f"{setting('stale_after_intervals')} must be more than 1 (one interval plus a margin), "
            f"got {chosen.stale_after_intervals:g}"
        )
    if chosen.rerun_window_minutes <= 0:
        raise ConfigurationError(
            f"{setting('rerun_window')} must be a positive number of minutes, got {chosen.rerun_window_minutes:g}"
        )
    return chosen


async def ensure_operations(saved: CountriesSettings, notify: BlockDocument | None = None) -> list[str]:
    """Apply the automations for the ``saved`` settings and the ``notify`` block they name (looked up if not
    given); one line per thing done or noticed. ``ConfigurationError``, changing nothing, when one cannot work."""
    options = choices(saved)
    crash_after = timedelta(seconds=options.crash_after_seconds)
    rerun_window = timedelta(minutes=options.rerun_window_minutes)
    lines: list[str] = []
    async with get_client() as client:
        if options.notify_block and notify is None:
            notify = await find_notification_block(client, options.notify_block)
        crashes = (
            ("crash-detection.yaml", "crash_after", crash_after, "a run silent for {} is marked Crashed and rerun"),
            ("rerun-crashed.yaml", "rerun_window", rerun_window, "a crashed run is rerun at once, at most every {}"),
        )
        for file, key, span, what in crashes:
            automation = load(file, **{key: describe_duration(span), f"{key}_seconds": span.total_seconds()})
            outcome = await apply_automation(client, automation)
            lines.append(f"automation '{automation.name}': {outcome} ({what.format(describe_duration(span))})")

        flow_filter = FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))
        deployments = sorted(await client.read_deployments(flow_filter=flow_filter), key=lambda d: d.name)
        if not deployments:
            lines.append(
                f"no deployment of flow '{FLOW_NAME}' on this server yet: run this again after "
                "`prefect deploy` to set up its stale-table alerts"
            )
        for d in deployments:
            every = heartbeat_seconds(d)
            if every * 2 > crash_after.total_seconds():
                lines.append(
                    f"warning: runs of {FLOW_NAME}/{d.name} send a heartbeat every {every:g} s, too rarely for "
                    f"the {describe_duration(crash_after)} crash timeout: set {HEARTBEAT_ENV}: "
                    f"{MINIMUM_HEARTBEAT_SECONDS} in its work_pool job_variables env (prefect.yaml) and deploy "
                    "again, or healthy long runs will be marked Crashed"
                )

        wanted: set[str] = set()
        for d in deployments if notify is not None else []:
            interval = active_interval(d)
            if d.paused or interval is None:
                why = "it is paused" if d.paused else "it has no active interval schedule"
                lines.append(f"no stale-table alert for {FLOW_NAME}/{d.name}: {why}")
                continue
            window = interval * options.stale_after_intervals
            alert = load(
                "stale-table.yaml",
                deployment=d.name,
                deployment_id=str(d.id),
                table=target_table(d.parameters.get("table"), d.parameters.get("regions")),
                notify_block=notify.name,
                notify_block_id=str(notify.id),
                window=describe_duration(window),
                window_seconds=window.total_seconds(),
                intervals=f"{options.stale_after_intervals:g}",
                interval=describe_duration(interval),
            )
            wanted.add(alert.name)
            lines.append(
                f"automation '{alert.name}': {await apply_automation(client, alert)} (notifies "
                f"'{options.notify_block}' after {describe_duration(window)} without a completed run)"
            )
        if notify is None:
            lines.append("stale-table alerts: off (name a notification block with --notify-block NAME to get them)")
        ours = await client.read_automations(
            automations=AutomationFilter(tags=AutomationFilterTags(all_=[AUTOMATION_TAG]))
        )
        for automation in ours:
            if automation.name.startswith(FRESHNESS_PREFIX) and automation.name not in wanted:
                await client.delete_automation(automation.id)
                lines.append(f"automation '{automation.name}': removed (its deployment no longer qualifies)")
    return lines
