"""Unattended operation: Prefect automations that catch dead runs, rerun them, and report stale tables.

``python blocks/create_blocks.py`` calls :func:`ensure_operations`, which creates
or updates these automations on the Prefect server (idempotent: run it as often
as you like; it only changes what differs):

1. ``countries: mark silent runs Crashed`` (:data:`CRASH_DETECTION`). A
   deployment run of the ``countries`` flow that has sent nothing (no heartbeat,
   no state change) for ``crash_after`` (default 90 s) since it went Pending or
   Running or sent a heartbeat died with its worker (kill -9, a stopped worker,
   a lost machine). The automation sets it to Crashed, which frees its
   deployment concurrency slot at once, and starts a new run of the same
   deployment (its own parameters). prefect.yaml makes deployment runs send a
   heartbeat every 30 s (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``), so 90 s is
   three missed heartbeats. This is Prefect's documented zombie-run recipe,
   limited to this flow's deployment runs, with the rerun in the same
   automation so that it also works right after a server restart (a restarted
   server holds back, for 15 minutes, reactions to state changes that follow
   ones it saw before the restart).
2. ``countries: rerun crashed runs`` (:data:`CRASH_RERUN`). When the worker or
   the run itself reports a deployment run of the flow Crashed (the flow run
   process was killed while its worker lived, the infrastructure failed), a new
   run of the same deployment starts at once. Runs marked Crashed by 1. are
   left to 1. A run that *failed* (bad key, unknown region, quality gate) is
   never rerun. Crash loops are bounded: at most one rerun per deployment per
   ``rerun_window`` (default 60 minutes); a crash inside the window waits for
   the next scheduled run. (Reruns by 1. need a worker that takes the rerun and
   then dies with it, so they cannot loop on their own; a supervisor that
   restarts a worker the run keeps killing makes such a loop, see
   docs/operations.md.)
3. ``countries: stale <flow>/<deployment>`` (:func:`freshness_name`), one per
   deployment of the flow with an active interval schedule, when a notification
   block is named: it notifies that block when the deployment has had no
   Completed run for ``stale_after_intervals`` (default 2) schedule intervals,
   and again after every further such window while it stays stale. Alerts of
   deployments that are gone, paused or without an active schedule are removed.

Run the setup after ``prefect deploy`` (the stale-table alerts are per
deployment, so a new deployment needs a new run of the setup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.automations import (
    Automation,
    AutomationCore,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    RunDeployment,
    SendNotification,
)
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import BlockDocument, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.filters import AutomationFilter, AutomationFilterTags

from flows.errors import ConfigurationError, setting
from flows.parameters import DEFAULT_REGIONS, default_table

FLOW_NAME = "countries"
AUTOMATION_TAG = "countries-pipeline"
CRASH_DETECTION = f"{FLOW_NAME}: mark silent runs Crashed"
CRASH_RERUN = f"{FLOW_NAME}: rerun crashed runs"
FRESHNESS_PREFIX = f"{FLOW_NAME}: stale "

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PREFECT_DEFAULT_HEARTBEAT_SECONDS = 180  # Prefect 3.8's default when the variable is not set
MINIMUM_HEARTBEAT_SECONDS = 30  # Prefect refuses lower values

# The state message the detector gives a silent run: the rerun automation leaves those to the detector.
SILENT_RUN_MESSAGE = "no heartbeat for"

DEFAULT_CRASH_AFTER = timedelta(seconds=90)
DEFAULT_RERUN_WINDOW = timedelta(minutes=60)
DEFAULT_STALE_AFTER_INTERVALS = 2.0

# Matches the flow runs of this flow that belong to a deployment.
_DEPLOYMENT_RUNS_OF_THE_FLOW = [
    {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
    {"prefect.resource.role": "deployment"},
]
_FLOW_RUNS = {"prefect.resource.id": "prefect.flow-run.*"}


def describe_duration(delta: timedelta) -> str:
    """``90 s``, ``45 min``, ``12 h``, ``1 day``, ``36 h``: a duration as an operator reads it (whole units)."""
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and (seconds % size == 0 or seconds >= 10 * size):
            value = seconds / size
            plural = "s" if unit == "day" and value != 1 else ""
            return f"{value:.3g} {unit}{plural}"
    return f"{seconds:.3g} s"


# --- the automations ------------------------------------------------------------------


def crash_detection(crash_after: timedelta = DEFAULT_CRASH_AFTER) -> AutomationCore:
    """The automation that marks a silent deployment run of the flow Crashed and reruns its deployment."""
    return AutomationCore(
        name=CRASH_DETECTION,
        description=(
            f"A deployment run of flow '{FLOW_NAME}' that sent no heartbeat and no state change for "
            f"{describe_duration(crash_after)} since it went Pending or Running or sent a heartbeat died with its "
            "worker: set it to Crashed (frees its deployment concurrency slot) and start a new run of its "
            f"deployment. Deployment runs send a heartbeat every 30 s ({HEARTBEAT_ENV} in prefect.yaml). "
            "Created by python blocks/create_blocks.py."
        ),
        tags=[AUTOMATION_TAG],
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.*"},
            match=_FLOW_RUNS,
            match_related=_DEPLOYMENT_RUNS_OF_THE_FLOW,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=crash_after,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"{SILENT_RUN_MESSAGE} {describe_duration(crash_after)}: the worker or the flow run process "
                    f"died; a new run of the deployment was started (automation '{CRASH_DETECTION}')"
                ),
            ),
            RunDeployment(source="inferred"),
        ],
    )


def crash_rerun(rerun_window: timedelta = DEFAULT_RERUN_WINDOW) -> AutomationCore:
    """The automation that reruns a deployment run reported Crashed, at most once per deployment per window."""
    return AutomationCore(
        name=CRASH_RERUN,
        description=(
            f"When a deployment run of flow '{FLOW_NAME}' is reported Crashed (its process was killed while the "
            "worker lived, the infrastructure failed), start a new run of the same deployment (its own "
            "parameters) at once. Failed runs are not rerun; silent runs are rerun by "
            f"'{CRASH_DETECTION}'. At most one rerun per deployment every {describe_duration(rerun_window)}, so "
            "a crash loop cannot spend the API quota; a later crash inside that window waits for the next "
            "scheduled run. Created by python blocks/create_blocks.py."
        ),
        tags=[AUTOMATION_TAG],
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={**_FLOW_RUNS, "prefect.state-message": f"!{SILENT_RUN_MESSAGE}*"},
            match_related=_DEPLOYMENT_RUNS_OF_THE_FLOW,
            for_each={"related:deployment:prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=rerun_window,
        ),
        actions=[RunDeployment(source="inferred")],
    )


def freshness_name(deployment: DeploymentResponse) -> str:
    """``countries: stale countries/all-regions``."""
    return f"{FRESHNESS_PREFIX}{FLOW_NAME}/{deployment.name}"


def deployment_table(deployment: DeploymentResponse) -> str:
    """The table a deployment's runs load: its ``table`` parameter, or the one its regions name by default."""
    parameters = deployment.parameters or {}
    table = str(parameters.get("table") or "").strip()
    if table:
        return table
    regions = parameters.get("regions") or DEFAULT_REGIONS
    return default_table([regions] if isinstance(regions, str) else regions)


def freshness(
    deployment: DeploymentResponse,
    interval: timedelta,
    stale_after_intervals: float,
    notify: BlockDocument,
) -> AutomationCore:
    """The stale-table alert of one deployment: no Completed run for ``stale_after_intervals`` intervals."""
    window = interval * stale_after_intervals
    table = deployment_table(deployment)
    what = f"table {table} (deployment {FLOW_NAME}/{deployment.name})"
    body = (
        f"{what.capitalize()} has had no completed run for {describe_duration(window)} "
        f"({stale_after_intervals:g} x its {describe_duration(interval)} schedule interval): its data is stale. "
        "Look at the deployment's latest runs in the Prefect UI (Failed: read the state message; Late or "
        "Scheduled: no worker is polling its pool). This alert repeats every "
        f"{describe_duration(window)} until a run completes."
    )
    return AutomationCore(
        name=freshness_name(deployment),
        description=(
            f"Notify block '{notify.name}' when deployment {FLOW_NAME}/{deployment.name} has had no Completed "
            f"run for {describe_duration(window)} ({stale_after_intervals:g} schedule intervals). "
            "Created by python blocks/create_blocks.py."
        ),
        tags=[AUTOMATION_TAG],
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match=_FLOW_RUNS,
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": f"prefect.deployment.{deployment.id}",
            },
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            SendNotification(
                block_document_id=notify.id,
                subject=f"{FLOW_NAME}: {table} is stale",
                body=_jinja_literal(body),
            )
        ],
    )


def _jinja_literal(text: str) -> str:
    """``text`` as a Jinja template that renders to itself (the server renders notification bodies)."""
    return text if "{" not in text and "%" not in text else "{% raw %}" + text + "{% endraw %}"


# --- reading the server ---------------------------------------------------------------


async def flow_deployments(client: PrefectClient) -> list[DeploymentResponse]:
    """Every deployment of the ``countries`` flow on the server, by name."""
    deployments = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    return sorted(deployments, key=lambda d: d.name)


def active_interval(deployment: DeploymentResponse) -> timedelta | None:
    """The shortest interval among the deployment's active interval schedules, or None."""
    intervals = [
        s.schedule.interval
        for s in deployment.schedules
        if s.active and isinstance(getattr(s.schedule, "interval", None), timedelta)
    ]
    return min(intervals) if intervals else None


def heartbeat_seconds(deployment: DeploymentResponse) -> float:
    """How often the deployment's runs send a heartbeat, from its ``env`` job variable (Prefect's default if unset).

    A worker or work pool can set the variable too; only the deployment's own
    job variables are read here.
    """
    env = (deployment.job_variables or {}).get("env") or {}
    value = env.get(HEARTBEAT_ENV)
    try:
        return max(float(value), MINIMUM_HEARTBEAT_SECONDS)
    except (TypeError, ValueError):
        return PREFECT_DEFAULT_HEARTBEAT_SECONDS


async def find_notification_block(client: PrefectClient, ref: str) -> BlockDocument:
    """The notification block named ``ref`` (``NAME`` or ``TYPE-SLUG/NAME``, e.g. ``slack-webhook/ops``).

    Raises ``ConfigurationError`` naming the notification blocks that exist when
    there is no such block, when the name is ambiguous, or when the block cannot notify.
    """
    slug, _, name = ref.rpartition("/")
    documents: list[BlockDocument] = []
    offset = 0
    while True:
        page = await client.read_block_documents(offset=offset, limit=200, include_secrets=False)
        documents += [d for d in page if not d.is_anonymous]
        if len(page) < 200:
            break
        offset += 200

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


# --- applying -------------------------------------------------------------------------


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    """The automation's definition as plain Python values (sets stay sets: their order means nothing)."""
    return AutomationCore.model_validate(automation.model_dump(mode="json")).model_dump(exclude={"owner_resource"})


async def apply_automation(client: PrefectClient, wanted: AutomationCore) -> str:
    """Create the automation named like ``wanted``, or update it to ``wanted``; ``created``/``updated``/``unchanged``
    (followed by ``; removed N duplicates`` when there were some).

    Extra automations of the same name are deleted: two setups run at once, or a create request that the
    client sent again after a slow answer (a busy server), would otherwise make an automation act twice.
    """
    existing = await client.read_automations_by_name(wanted.name)
    if not existing:
        await client.create_automation(wanted)
        _, *extra = await client.read_automations_by_name(wanted.name)
        for duplicate in extra:
            await client.delete_automation(duplicate.id)
        return "created"
    keep, *extra = existing
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    removed = f"; removed {len(extra)} duplicate{'s' if len(extra) > 1 else ''}" if extra else ""
    if _comparable(keep) == _comparable(wanted):
        return "unchanged" + removed
    await client.update_automation(keep.id, wanted)
    return "updated" + removed


@dataclass(frozen=True)
class Options:
    """The operator's choices (``blocks/create_blocks.py`` fills them from its options, then the saved settings)."""

    crash_after: timedelta = DEFAULT_CRASH_AFTER
    rerun_window: timedelta = DEFAULT_RERUN_WINDOW
    notify_block: str | None = None
    stale_after_intervals: float = DEFAULT_STALE_AFTER_INTERVALS


def check_options(options: Options) -> None:
    """Raise ``ConfigurationError`` (one line) when a number in ``options`` cannot work."""
    if options.crash_after < timedelta(seconds=2 * MINIMUM_HEARTBEAT_SECONDS):
        raise ConfigurationError(
            f"{setting('crash_after')} must be at least {2 * MINIMUM_HEARTBEAT_SECONDS} s (two heartbeats of "
            f"{MINIMUM_HEARTBEAT_SECONDS} s, Prefect's shortest), got {describe_duration(options.crash_after)}"
        )
    if not math.isfinite(options.stale_after_intervals) or options.stale_after_intervals <= 1:
        raise ConfigurationError(
            f"{setting('stale_after_intervals')} must be more than 1 (one interval plus a margin), "
            f"got {options.stale_after_intervals:g}"
        )
    if options.rerun_window <= timedelta(0):
        raise ConfigurationError(
            f"{setting('rerun_window')} must be a positive number of minutes, got "
            f"{options.rerun_window.total_seconds() / 60:g}"
        )


async def ensure_operations(options: Options) -> list[str]:
    """Create or update the operations automations on the server; one report line per thing done or noticed.

    Lines starting with ``warning:`` need the operator's attention. Raises
    ``ConfigurationError`` when an option cannot work or the notification block
    cannot be used, before anything is changed.
    """
    check_options(options)
    lines: list[str] = []
    async with get_client() as client:
        notify = await find_notification_block(client, options.notify_block) if options.notify_block else None
        outcome = await apply_automation(client, crash_detection(options.crash_after))
        lines.append(
            f"automation '{CRASH_DETECTION}': {outcome} (a deployment run silent for "
            f"{describe_duration(options.crash_after)} is marked Crashed and rerun at once)"
        )
        outcome = await apply_automation(client, crash_rerun(options.rerun_window))
        lines.append(
            f"automation '{CRASH_RERUN}': {outcome} (a deployment run reported Crashed is rerun at once, at "
            f"most once per deployment every {describe_duration(options.rerun_window)})"
        )

        deployments = await flow_deployments(client)
        if not deployments:
            lines.append(
                f"no deployment of flow '{FLOW_NAME}' on this server yet: run this again after "
                "`prefect deploy` to set up its stale-table alerts"
            )
        for d in deployments:
            every = heartbeat_seconds(d)
            if every * 2 > options.crash_after.total_seconds():
                lines.append(
                    f"warning: runs of {FLOW_NAME}/{d.name} send a heartbeat every {every:g} s, too rarely for "
                    f"the {describe_duration(options.crash_after)} crash timeout: set {HEARTBEAT_ENV}: "
                    f"{MINIMUM_HEARTBEAT_SECONDS} in its work_pool job_variables env (prefect.yaml) and deploy "
                    "again, or healthy long runs will be marked Crashed"
                )

        wanted: dict[str, AutomationCore] = {}
        for d in deployments:
            interval = active_interval(d)
            if notify is None:
                continue
            if d.paused or interval is None:
                why = "it is paused" if d.paused else "it has no active interval schedule"
                lines.append(f"no stale-table alert for {FLOW_NAME}/{d.name}: {why}")
                continue
            wanted[freshness_name(d)] = freshness(d, interval, options.stale_after_intervals, notify)
        if notify is None:
            lines.append("stale-table alerts: off (name a notification block with --notify-block NAME to get them)")
        for name, automation in wanted.items():
            outcome = await apply_automation(client, automation)
            window = automation.trigger.within
            lines.append(
                f"automation '{name}': {outcome} (notifies '{options.notify_block}' after "
                f"{describe_duration(window)} without a completed run)"
            )
        ours = await client.read_automations(
            automations=AutomationFilter(tags=AutomationFilterTags(all_=[AUTOMATION_TAG]))
        )
        for automation in ours:
            if automation.name.startswith(FRESHNESS_PREFIX) and automation.name not in wanted:
                await client.delete_automation(automation.id)
                lines.append(f"automation '{automation.name}': removed (its deployment no longer qualifies)")
    return lines


async def read_operations_automations() -> list[Automation]:
    """The automations this module manages that exist on the server (by tag)."""
    async with get_client() as client:
        return await client.read_automations(
            automations=AutomationFilter(tags=AutomationFilterTags(all_=[AUTOMATION_TAG]))
        )


async def check_notification_block(ref: str) -> None:
    """Raise ``ConfigurationError`` unless ``ref`` names one notification block on the server."""
    async with get_client() as client:
        await find_notification_block(client, ref)
