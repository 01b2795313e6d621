"""TrafficConfig: progressive delivery of model versions served by KServe."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from model_traffic.kinds.backend.spec import APISchema, ChildRef
from model_traffic.kinds.common import (
    GatewayRef,
    HeaderValueText,
    LocalObjectReference,
    Model,
    StatusBase,
    cel,
    name_length_rule,
    validations,
)
from model_traffic.kinds.trafficconfig.analysis_spec import Analysis, WebhookCall
from model_traffic.kinds.trafficconfig.inferenceservice import InferenceServiceTemplate, Resources, StorageUri
from model_traffic.kinds.virtualmodel.spec import AUTH_RATE_LIMIT_RULES, Auth, RateLimit

KIND = "TrafficConfig"
PLURAL = "trafficconfigs"

VERSION_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Where a rollout is: the phase list, defined here once. Which phase may follow which is the state machine's
# (kinds/trafficconfig/render.py, TRANSITIONS); the status, the metrics and the docs read this list.
Phase = Literal["Initializing", "Progressing", "Paused", "WaitingPromotion", "Promoting", "Succeeded", "Failed"]
PHASES: tuple[Phase, ...] = get_args(Phase)

# Actions people ask of a rollout through the status subresource (status.requests), which a GitOps sync does not
# revert (Argo Rollouts' status.abort / status.promoteFull). Acted on in the order of their tokens.
RequestAction = Literal["promote", "abort", "retry", "pause", "resume"]
REQUEST_ACTIONS: tuple[RequestAction, ...] = get_args(RequestAction)

# What deleting a TrafficConfig does to its children (kinds/trafficconfig/deletion.py).
DeletionPolicy = Literal["Retain", "Delete"]

# Each version runs as InferenceService <name>-<version>. KServe names the predictor's Service <isvc>-predictor and,
# in serverless mode, Knative names its revisions <isvc>-predictor-00001: a DNS label (and label value) of at most 63
# characters. So len(name) + 1 + len(version) <= 63 - len("-predictor-00001") = 47.
MAX_INFERENCE_SERVICE_NAME_LENGTH = 47


class ModelVersion(Model):
    version: str = Field(
        min_length=1, max_length=40, pattern=VERSION_PATTERN,
        description="Version label (lowercase, DNS-safe); the InferenceService is <name>-<version>.",
    )
    storage_uri: StorageUri | None = Field(
        default=None,
        description="Where the weights are, e.g. hf://org/model:revision (a scheme KServe supports).",
    )
    # Sizing per version: the template is shared by every version and applies to all of them in place, so without
    # these a canary is as large as production and a resize reaches the stable at once.
    replicas: int | None = Field(
        default=None, ge=1, le=1000,
        description="This version's replica count: the predictor's minReplicas and maxReplicas, over the "
        "template's (the referenced InferenceService of inferenceService.ref itself is never written).",
    )
    resources: Resources | None = Field(
        default=None,
        description="This version's requests and limits, merged key by key over the template model's resources. "
        "The referenced InferenceService of inferenceService.ref itself is never written.",
    )


class CanaryVersion(ModelVersion):
    weight: int | None = Field(
        default=None, ge=1, le=100,
        description="Hold the candidate at this weight (a manual canary): checks still run and roll back on "
        "failure, promotion is manual. Change it to move the weight at once.",
    )


class Release(ModelVersion):
    weight: int | None = Field(
        default=None, ge=1, le=100,
        description="While this release is the candidate, hold it at this weight (a manual canary): checks still "
        "run and roll back on failure, promotion is manual. Change it to move the weight at once.",
    )

    def as_version(self) -> ModelVersion:
        """The release as the stable runs it (a held weight is a candidate's only)."""
        return ModelVersion.model_validate(self.model_dump(exclude={"weight"}))


class Variant(ModelVersion):
    weight: int = Field(ge=0, le=100, description="Percent of traffic (Weighted strategy).")


class InferenceServiceSource(Model):
    """What each version runs: a template, or an existing InferenceService (brownfield)."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.template) != has(self.ref)", "inferenceService needs exactly one of template or ref"),
        )
    }

    template: InferenceServiceTemplate | None = Field(
        default=None,
        description="An InferenceService spec (a predictor with a model, within Pod Security's baseline); storageUri "
        "and served model name are set per version.",
    )
    ref: LocalObjectReference | None = Field(
        default=None, description="An existing InferenceService: the stable version, cloned for new versions."
    )


class TrafficConfigSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.release) ? !has(self.stable) && !has(self.canary) : has(self.stable)",
                "set spec.release, the version you want to run; spec.stable and spec.canary are its deprecated "
                "form and cannot be combined with it (docs/upgrade.md)"),
            cel("!has(self.canary) || !has(self.stable) || self.canary.version != self.stable.version",
                "canary.version must differ from stable.version"),
            cel("self.strategy != 'Weighted' || (has(self.variants) && size(self.variants) > 0)",
                "the Weighted strategy needs variants"),
            cel("self.strategy == 'Weighted' || !has(self.variants)",
                "variants apply to the Weighted strategy only"),
            cel("!has(self.variants) || self.variants.map(v, v.weight).sum() == 100",
                "variant weights must sum to 100"),
            cel("!has(self.variants) || self.variants.all(a, self.variants.exists_one(b, a.version == b.version))",
                "variant versions must be unique"),
            cel("!has(self.variants) || self.variants.exists(v, v.version == (has(self.release) ? "
                "self.release.version : has(self.stable) ? self.stable.version : ''))",
                "the stable version must be one of the variants (spec.release names it)"),
            cel("self.strategy != 'ABTest' || (has(self.analysis) && has(self.analysis.match))",
                "the ABTest strategy needs analysis.match"),
            cel("!has(self.canary) || !has(self.canary.weight) || self.strategy == 'Canary'",
                "canary.weight applies to the Canary strategy only"),
            cel("!has(self.release) || !has(self.release.weight) || self.strategy == 'Canary'",
                "release.weight applies to the Canary strategy only"),
            cel("self.strategy != 'Weighted' || !has(self.canary)",
                "the Weighted strategy takes variants, not a canary"),
            *AUTH_RATE_LIMIT_RULES,
        )
    }

    model_name: HeaderValueText | None = Field(
        default=None, max_length=256, description="Client-facing model name; metadata.name if unset."
    )
    gateway_refs: list[GatewayRef] | None = Field(default=None, max_length=16, description="As VirtualModel.")
    schema_: APISchema = Field(
        # KServe's Hugging Face runtime serves the OpenAI API under /openai
        # (python/kserve/kserve/protocol/rest/openai/endpoints.py, OPENAI_ROUTE_PREFIX).
        default=APISchema(name="OpenAI", prefix="/openai/v1"), alias="schema",
        description="What the served runtime speaks, and under which path prefix.",
    )
    inference_service: InferenceServiceSource = Field(description="What each version runs.")
    strategy: Literal["Canary", "ABTest", "BlueGreen", "Weighted"] = Field(
        default="Canary", description="How a new version takes traffic."
    )
    # Git holds the desired release; the status says what is stable and what is the candidate (Flagger, Argo
    # Rollouts). A new version here starts a rollout from the stable in status; its success needs no commit.
    release: Release | None = Field(
        default=None,
        description="The version you want to run. The first one becomes stable at once; a later one (another "
        "version label) is rolled out from the stable recorded in status.stable, by the strategy, and becomes "
        "stable when it passes (no further commit); when it fails it is rolled back and stays here, Failed, until "
        "it changes or a retry request. The same version label with other fields (storage, size) changes that "
        "version in place. Weighted: the variant that counts as the stable one.",
    )
    stable: ModelVersion | None = Field(
        default=None, description="Deprecated (use release): the version serving production traffic.")
    canary: CanaryVersion | None = Field(
        default=None, description="Deprecated (use release): the candidate; setting it starts a rollout.")
    variants: list[Variant] | None = Field(default=None, max_length=10, description="Weighted: explicit weights.")
    analysis: Analysis | None = Field(default=None, description="Steps, checks and promotion.")
    paused: bool = Field(default=False, description="Freeze the rollout where it is.")
    # Flagger's and Argo Rollouts' default; a deadline runs only while the rollout waits on the world (a Paused or
    # WaitingPromotion rollout waits on a person, a check not yet due on the clock).
    progress_deadline_seconds: int = Field(
        default=600, ge=30, le=86400,
        description="How long a rollout step (Initializing or Progressing) may make no progress (a candidate not "
        "Ready, checks failing or without data, traffic not reaching the VirtualModel) before the object is "
        "Stalled with reason ProgressDeadlineExceeded. Counted from status.lastProgressTime (or, in a step, from "
        "when its first check was due). Paused and WaitingPromotion never time out.",
    )
    progress_deadline_abort: bool = Field(
        default=False,
        description="Roll the candidate back (phase Failed) when progressDeadlineSeconds is exceeded, instead of "
        "only reporting Stalled (Argo Rollouts' progressDeadlineAbort).",
    )
    # Passed on unchanged to the VirtualModel, which renders the SecurityPolicy and the rate limits: every version
    # of a rollout is behind the same authentication and budgets.
    auth: Auth | None = Field(
        default=None, description="As VirtualModel: API keys or JWT; the caller's identity is the tenant."
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="As VirtualModel: token and request budgets per tenant, shared by all versions."
    )
    # Flagger leaves a deleted Canary's workload serving (its revertOnDeletion defaults to false); Retain is that.
    deletion_policy: DeletionPolicy = Field(
        default="Retain",
        description="What deleting this TrafficConfig does to what it made. Retain (default): all traffic goes to "
        "the stable version first, then its InferenceService, its ManagedAIServiceBackend and the VirtualModel are "
        "kept serving, orphaned with the annotation modeltraffic.io/orphaned-from (a TrafficConfig of the same name "
        "adopts them again); the other versions' objects are deleted. Delete: everything it owns is deleted with "
        "it, and the model name goes offline.",
    )

    def first_stable(self) -> ModelVersion:
        """The stable version of an object with nothing recorded yet: the release (or the deprecated stable)."""
        if self.release is not None:
            return self.release.as_version()
        assert self.stable is not None  # the CEL rule: release, or stable
        return self.stable


class MetricResult(Model):
    name: str
    value: float | None = None
    stable_value: float | None = None
    passed: bool
    inconclusive: bool | None = Field(
        default=None, description="Neither passed nor failed (the metric's inconclusive range): the rollout pauses.")
    message: str = ""


class VersionStatus(Model):
    version: str
    inference_service: str
    ready: bool
    url: str | None = None
    weight: int | None = Field(default=None, description="Percent of traffic it gets now.")
    metrics: list[MetricResult] = Field(
        default_factory=list,
        description="Weighted: the analysis metrics measured for this variant at the last interval, with the "
        "stable version's value of the same window (stableValue) for comparison. Informative: no rollback.",
    )


class PendingEvent(Model):
    """An Event the rollout decided on, recorded with the progress that caused it and posted right after: a crash
    in between posts it at the next reconcile, under the same name (so never twice)."""

    name: str = Field(description="The Event's name: deterministic, so posting it again finds it posted.")
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    time: str = Field(description="When it happened (RFC 3339, microseconds): the Event's eventTime.")
    count: int = Field(default=1, description="How often it happened in this rollout (a series from 2 on).")


RequestToken = Annotated[str, Field(min_length=1, max_length=64)]


class Requests(Model):
    """One token per action. A new token (an RFC 3339 time, as the CLI and the Argo CD actions write) asks once."""

    promote: RequestToken | None = Field(default=None, description="Skip the remaining steps: promote the "
                                         "candidate now (it must be Ready).")
    abort: RequestToken | None = Field(default=None, description="Roll back: all traffic to the stable; the phase "
                                       "is Failed until a retry or a new candidate.")
    retry: RequestToken | None = Field(default=None, description="Start the rollout of a rolled-back (Failed) "
                                       "candidate again from its first step.")
    pause: RequestToken | None = Field(default=None, description="Freeze the rollout where it is (also a rollout "
                                       "that starts later), until a resume.")
    resume: RequestToken | None = Field(default=None, description="Undo a requested pause (spec.paused, desired "
                                        "state, is Git's to change).")


class TrafficConfigStatus(StatusBase):
    phase: Phase | None = Field(default=None, description="Where the rollout is.")
    stable_version: str | None = Field(default=None, description="The stable version.")
    candidate_version: str | None = Field(default=None, description="The version being rolled out.")
    stable: ModelVersion | None = Field(
        default=None,
        description="The stable version in full (storage, size): what serves when no rollout runs. Git holds "
        "only the desired release (spec.release), so the stable's definition lives here.",
    )
    candidate: ModelVersion | None = Field(
        default=None, description="The version being rolled out, in full (from spec.release).")
    canary_weight: int | None = Field(default=None, description="Percent of traffic on the candidate.")
    current_step: int | None = Field(default=None, description="Index of the current step.")
    failed_checks: int | None = Field(default=None, description="Failed checks in this rollout.")
    iterations: int | None = Field(default=None, description="Checks passed in this rollout.")
    last_step_time: str | None = Field(default=None, description="When the last step or check was taken.")
    last_progress_time: str | None = Field(
        default=None,
        description="When the rollout last made progress (its phase, candidate, step, weight or passed checks "
        "changed, or its traffic reached the VirtualModel): spec.progressDeadlineSeconds counts from here.",
    )
    traffic_since: str | None = Field(
        default=None,
        description="When the live VirtualModel was first seen carrying the current step's traffic (its "
        "controller having acted on it): the next check is due one interval after it, so a check only measures "
        "traffic of the step it judges. Absent while the step waits to reach the traffic.",
    )
    pending_events: list[PendingEvent] = Field(
        default_factory=list,
        description="Events recorded with the last progress and not yet confirmed posted (an outbox).",
    )
    last_results: list[MetricResult] = Field(default_factory=list, description="Last analysis results.")
    webhook_calls: list[WebhookCall] = Field(
        default_factory=list, description="Webhooks called for the check under way, whose answers are awaited.")
    requests: Requests | None = Field(
        default=None,
        description="Written by people, never by the operator: actions asked of the rollout through the status "
        "subresource (model-traffic promote|abort|retry|pause|resume, Argo CD's resource actions), so a GitOps "
        "sync does not revert them. A request is pending while its token differs from handledRequests'.",
    )
    handled_requests: Requests | None = Field(
        default=None,
        description="The token of each action's request the operator acted on (or refused, with a Warning Event), "
        "recorded with the progress it caused, so a request is acted on exactly once, across crashes too.",
    )
    paused_by_request: bool | None = Field(
        default=None, description="A pause request holds the rollout (until a resume request).",
    )
    versions: list[VersionStatus] = Field(default_factory=list, description="Each live version.")
    # Declared like the other kinds' (the operator writes it for all three): undeclared, the API server pruned it
    # and every reconcile found the status changed and wrote it again.
    children: list[ChildRef] = Field(
        default_factory=list,
        description="Objects the operator owns for this one (the InferenceServices, ManagedAIServiceBackends and "
        "VirtualModel it writes).",
    )


_VERSION_FITS = f"size(self.metadata.name) + 1 + size(v.version) <= {MAX_INFERENCE_SERVICE_NAME_LENGTH}"
_WHY_VERSION_FITS = (
    f"each version runs as InferenceService <name>-<version>, at most {MAX_INFERENCE_SERVICE_NAME_LENGTH} characters "
    "(KServe's <isvc>-predictor-00001 must fit a 63-character DNS label)"
)

ROOT_VALIDATIONS = [
    name_length_rule(MAX_INFERENCE_SERVICE_NAME_LENGTH - 2, _WHY_VERSION_FITS + ", and a version is at least 1"),
    cel(f"!has(self.spec.release) || [self.spec.release].all(v, {_VERSION_FITS})",
        f"metadata.name and spec.release.version are too long together: {_WHY_VERSION_FITS}"),
    cel(f"!has(self.spec.stable) || [self.spec.stable].all(v, {_VERSION_FITS})",
        f"metadata.name and spec.stable.version are too long together: {_WHY_VERSION_FITS}"),
    cel(f"!has(self.spec.canary) || [self.spec.canary].all(v, {_VERSION_FITS})",
        f"metadata.name and spec.canary.version are too long together: {_WHY_VERSION_FITS}"),
    cel(f"!has(self.spec.variants) || self.spec.variants.all(v, {_VERSION_FITS})",
        f"metadata.name and a version of spec.variants are too long together: {_WHY_VERSION_FITS}"),
]


class TrafficConfig(Model):
    spec: TrafficConfigSpec
    status: TrafficConfigStatus | None = None
