"""The InferenceService template of a TrafficConfig: what a model version needs, and nothing more.

A TrafficConfig writes one KServe InferenceService per version from this template, so whoever may write a
TrafficConfig gets to shape pods. The template therefore takes only what serving a model version needs (model
format, runtime, storage, args, env, resources, replicas, scheduling, volumes for caches and claims) and refuses
at ``kubectl apply`` what Pod Security's *baseline* profile refuses: privileged containers, host namespaces
(hostNetwork, hostPID, hostIPC), hostPath volumes, host ports and capabilities beyond baseline's list. Those
fields are declared only so the refusal says why; unknown fields are refused by the schema as always.

Anything beyond this (a custom container, a sidecar, a transformer) belongs in an InferenceService written and
reviewed on its own, which the TrafficConfig then references (``inferenceService.ref``) and clones per version.

Field names and types follow KServe's ``serving.kserve.io/v1beta1`` InferenceService (PredictorSpec, ModelSpec,
the core/v1 Container and PodSpec fields it inlines).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from model_traffic.kinds.common import Matching, Model, ObjectName, cel, validations

# Pod Security Standards, baseline profile: the only capabilities a container may add.
BASELINE_CAPABILITIES = (
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
)
BASELINE = "Pod Security's baseline profile forbids it"

# The URI schemes KServe's storage initializer takes (SupportedStorageURIPrefixList in kserve v0.16
# pkg/controller/v1beta1/inferenceservice/utils/utils.go; Azure Blob and Files are https:// URLs). The rest of the URI:
# no whitespace, no control characters, no quotes and no shell metacharacters ($ ` ; & | < > ( ) { } \ !), which no
# model location needs and which the storage initializer's shell and URL handling must never see.
STORAGE_URI_SCHEMES = ("hf", "s3", "gs", "pvc", "oci", "https", "http", "hdfs", "webhdfs", "file")
STORAGE_URI_PATTERN = (
    rf"^({'|'.join(STORAGE_URI_SCHEMES)})://[^\s\x00-\x1f\x7f\x22\x27$`;&|<>(){{}}\\!]+$"
)
StorageUri = Annotated[str, Field(max_length=2048), Matching(
    STORAGE_URI_PATTERN,
    f"storageUri must be <scheme>://<location> with a scheme KServe's storage initializer supports "
    f"({', '.join(STORAGE_URI_SCHEMES)}), and no whitespace, control characters, quotes or shell metacharacters "
    "($ ` ; & | < > ( ) {{ }} \\ !)",
)]

# A resource quantity (2, "500m", "16Gi"): an int or a string, as core/v1 declares it. KServe's own schema checks
# the format when the InferenceService is written.
Quantity = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]
EnvName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
ShortText = Annotated[str, Field(max_length=4096)]


class ModelFormat(Model):
    name: str = Field(min_length=1, max_length=63, description="Model format, e.g. huggingface, sklearn, onnx.")
    version: str | None = Field(default=None, max_length=63, description="Version of the model format.")


class StorageSpec(Model):
    """KServe's storage spec: a key of the storage-config Secret instead of a URI."""

    key: str | None = Field(default=None, max_length=253, description="Key of the storage-config Secret.")
    path: str | None = Field(default=None, max_length=2048, description="Path of the model in the storage.")
    schema_path: str | None = Field(default=None, max_length=2048, description="Path of the model's schema.")
    parameters: dict[str, ShortText] | None = Field(default=None, description="Overrides of the storage config.")


class KeyReference(Model):
    name: ObjectName = Field(description="Name of the Secret or ConfigMap, in this namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key in it.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class FieldReference(Model):
    field_path: str = Field(min_length=1, max_length=256, description="e.g. metadata.name, status.podIP.")


class EnvVarSource(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(cel(
            "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)].filter(x, x).size() == 1",
            "valueFrom needs exactly one of secretKeyRef, configMapKeyRef or fieldRef",
        ))
    }

    secret_key_ref: KeyReference | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyReference | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldReference | None = Field(default=None, description="A field of the pod.")


class EnvVar(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("!(has(self.value) && has(self.valueFrom))", "an env var takes value or valueFrom, not both"),
        )
    }

    name: EnvName = Field(description="Variable name.")
    value: ShortText | None = Field(default=None, description="Its value.")
    value_from: EnvVarSource | None = Field(default=None, description="Where its value comes from.")


class Resources(Model):
    limits: dict[str, Quantity] | None = Field(default=None, description="e.g. cpu, memory, nvidia.com/gpu.")
    requests: dict[str, Quantity] | None = Field(default=None, description="e.g. cpu, memory.")


class ContainerPort(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("!has(self.hostPort) || self.hostPort == 0", f"hostPort is refused: {BASELINE}"),
        )
    }

    container_port: int = Field(ge=1, le=65535, description="Port the model server listens on.")
    name: str | None = Field(default=None, max_length=15, description="Port name, e.g. http1, h2c.")
    protocol: Literal["TCP", "UDP", "SCTP"] | None = Field(default=None, description="Protocol.")
    host_port: int | None = Field(default=None, description="Refused (declared only to say why).")


class VolumeMount(Model):
    name: ObjectName = Field(description="A volume of the predictor.")
    mount_path: str = Field(min_length=1, max_length=1024, description="Where it is mounted.")
    read_only: bool | None = Field(default=None, description="Mount read-only.")
    sub_path: str | None = Field(default=None, max_length=1024, description="A path inside the volume.")


_ADDABLE_CAPABILITIES = ", ".join(f"'{c}'" for c in BASELINE_CAPABILITIES)


class Capabilities(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(cel(
            f"!has(self.add) || self.add.all(c, c in [{_ADDABLE_CAPABILITIES}])",
            f"capabilities.add may only name {', '.join(BASELINE_CAPABILITIES)}: {BASELINE} to add others",
        ))
    }

    add: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=16, description="Capabilities added (baseline's list only)."
    )
    drop: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=64, description="Capabilities dropped."
    )


class SeccompProfile(Model):
    type: Literal["RuntimeDefault", "Localhost"] = Field(description="RuntimeDefault or Localhost (not Unconfined).")
    localhost_profile: str | None = Field(default=None, max_length=1024, description="For Localhost.")


class SecurityContext(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("!has(self.privileged) || !self.privileged", f"privileged containers are refused: {BASELINE}"),
        )
    }

    privileged: bool | None = Field(default=None, description="Refused when true (declared only to say why).")
    allow_privilege_escalation: bool | None = Field(default=None, description="Whether setuid binaries may gain.")
    capabilities: Capabilities | None = Field(default=None, description="Capabilities to add (baseline) or drop.")
    run_as_non_root: bool | None = Field(default=None, description="Refuse to run as UID 0.")
    run_as_user: int | None = Field(default=None, ge=0, description="UID.")
    run_as_group: int | None = Field(default=None, ge=0, description="GID.")
    read_only_root_filesystem: bool | None = Field(default=None, description="Mount the root filesystem read-only.")
    seccomp_profile: SeccompProfile | None = Field(default=None, description="Seccomp profile.")


class ModelTemplate(Model):
    """``predictor.model``: the version's storageUri and served model name (--model_name) are set on it."""

    model_format: ModelFormat = Field(description="The model's format; picks a ServingRuntime.")
    runtime: ObjectName | None = Field(default=None, description="A ServingRuntime by name; chosen by KServe if unset.")
    runtime_version: str | None = Field(default=None, max_length=128, description="Image tag of the runtime.")
    protocol_version: Literal["v1", "v2", "grpc-v2"] | None = Field(default=None, description="Inference protocol.")
    storage_uri: StorageUri | None = Field(
        default=None, description="Used by versions that set no storageUri of their own.",
    )
    storage: StorageSpec | None = Field(default=None, description="Storage by storage-config key, instead of a URI.")
    args: list[ShortText] | None = Field(default=None, max_length=64, description="Runtime arguments.")
    env: list[EnvVar] | None = Field(default=None, max_length=64, description="Environment variables.")
    resources: Resources | None = Field(default=None, description="CPU, memory, accelerators.")
    ports: list[ContainerPort] | None = Field(default=None, max_length=8, description="Ports of the model server.")
    volume_mounts: list[VolumeMount] | None = Field(default=None, max_length=16, description="Volumes mounted.")
    security_context: SecurityContext | None = Field(default=None, description="Within baseline.")


class Toleration(Model):
    key: str | None = Field(default=None, max_length=316, description="Taint key; all when unset with Exists.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value, with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Effect.")
    toleration_seconds: int | None = Field(default=None, description="NoExecute: how long it stays.")


class EmptyDirVolume(Model):
    medium: Literal["", "Memory"] | None = Field(default=None, description="Memory for a tmpfs (e.g. /dev/shm).")
    size_limit: Quantity | None = Field(default=None, description="Size limit.")


class ClaimVolume(Model):
    claim_name: ObjectName = Field(description="A PersistentVolumeClaim in this namespace.")
    read_only: bool | None = Field(default=None, description="Mount read-only.")


class ConfigMapVolume(Model):
    name: ObjectName = Field(description="A ConfigMap in this namespace.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class SecretVolume(Model):
    secret_name: ObjectName = Field(description="A Secret in this namespace.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class Volume(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("!has(self.hostPath)", f"hostPath volumes are refused: {BASELINE}"),
            cel("[has(self.emptyDir), has(self.persistentVolumeClaim), has(self.configMap), has(self.secret)]"
                ".filter(x, x).size() == 1",
                "a volume needs exactly one of emptyDir, persistentVolumeClaim, configMap or secret"),
        )
    }

    name: ObjectName = Field(description="Volume name, as volumeMounts name it.")
    empty_dir: EmptyDirVolume | None = Field(default=None, description="Scratch space or a tmpfs.")
    persistent_volume_claim: ClaimVolume | None = Field(default=None, description="A claim, e.g. a model cache.")
    config_map: ConfigMapVolume | None = Field(default=None, description="A ConfigMap's keys as files.")
    secret: SecretVolume | None = Field(default=None, description="A Secret's keys as files.")
    host_path: dict[str, Any] | None = Field(default=None, description="Refused (declared only to say why).")


class PredictorTemplate(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.model)",
                "predictor.model is required: each version's storageUri and served model name (--model_name) are "
                "set on it. A custom-container predictor is not supported in a template: write that "
                "InferenceService yourself and reference it with inferenceService.ref"),
            cel("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas"),
            cel("!(has(self.hostNetwork) && self.hostNetwork) && !(has(self.hostPID) && self.hostPID)"
                " && !(has(self.hostIPC) && self.hostIPC)",
                f"hostNetwork, hostPID and hostIPC are refused: {BASELINE}"),
        )
    }

    model: ModelTemplate | None = Field(default=None, description="The model (required).")
    min_replicas: int | None = Field(default=None, ge=0, le=1000, description="Fewest replicas (0: scale to zero).")
    max_replicas: int | None = Field(default=None, ge=1, le=1000, description="Most replicas.")
    scale_target: int | None = Field(default=None, ge=1, description="Target of the scale metric per replica.")
    scale_metric: Literal["cpu", "memory", "concurrency", "rps"] | None = Field(
        default=None, description="Metric the autoscaler follows."
    )
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount of the pods (e.g. carrying storage credentials)."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, description="Node labels the pods need (e.g. an accelerator type)."
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=16, description="Taints tolerated.")
    volumes: list[Volume] | None = Field(default=None, max_length=16, description="Volumes for volumeMounts.")
    host_network: bool | None = Field(default=None, description="Refused when true (declared only to say why).")
    host_pid: bool | None = Field(default=None, alias="hostPID", description="Refused when true.")
    host_ipc: bool | None = Field(default=None, alias="hostIPC", description="Refused when true.")


class InferenceServiceTemplate(Model):
    """The spec of each version's InferenceService (KServe serving.kserve.io/v1beta1), limited to a predictor with a
    model: see the module docstring for what it takes and why."""

    predictor: PredictorTemplate = Field(description="The predictor; its model gets each version's storageUri.")
