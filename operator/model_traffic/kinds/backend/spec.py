"""ManagedAIServiceBackend: one LLM backend and everything Envoy AI Gateway needs to reach it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from model_traffic.kinds.common import (
    MAX_OWNER_NAME_LENGTH,
    HeaderName,
    HeaderValueText,
    Hostname,
    LocalObjectReference,
    Model,
    ObjectName,
    PrintableWord,
    StatusBase,
    cel,
    name_length_rule,
    validations,
)

KIND = "ManagedAIServiceBackend"
PLURAL = "managedaiservicebackends"

SchemaName = Literal[
    "OpenAI", "Cohere", "AWSBedrock", "AzureOpenAI", "GCPVertexAI", "GCPAnthropic", "Anthropic", "AWSAnthropic"
]
CredentialType = Literal[
    "APIKey", "AnthropicAPIKey", "AzureAPIKey", "AWSCredentials", "AzureCredentials", "GCPCredentials"
]

# The Secret key Envoy AI Gateway reads for each credential type; it is fixed upstream, so it is checked,
# not configurable.
SECRET_KEY_BY_CREDENTIAL_TYPE: dict[str, str] = {
    "APIKey": "apiKey",
    "AnthropicAPIKey": "apiKey",
    "AzureAPIKey": "apiKey",
    "AWSCredentials": "credentials",
    "AzureCredentials": "client-secret",
    "GCPCredentials": "service_account.json",
}

# Headers that carry credentials or sessions: setting them by headerMutation would put a secret into a plain spec
# (readable by anyone who can read the object, and copied into the AIServiceBackend). Compared in lower case.
CREDENTIAL_HEADERS = (
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "x-amz-security-token",
    "ocp-apim-subscription-key", "cookie", "set-cookie",
)


class APISchema(Model):
    """The API the backend speaks, as Envoy AI Gateway names it."""

    name: SchemaName = Field(description="The API schema: OpenAI, Cohere, AWSBedrock, AzureOpenAI, ...")
    version: PrintableWord | None = Field(
        default=None, max_length=64, description="Schema version, e.g. v1 for OpenAI, an api-version for Azure."
    )
    prefix: PrintableWord | None = Field(
        default=None, max_length=256, description="Path prefix of the API on the backend, e.g. /v1."
    )


class FQDNEndpoint(Model):
    """A backend reached by DNS name."""

    hostname: Hostname = Field(description="DNS name of the backend, e.g. api.openai.com.")
    port: int = Field(ge=1, le=65535, description="Port of the backend.")


class IPEndpoint(Model):
    """A backend reached by IP address."""

    address: str = Field(
        min_length=3, max_length=45, description="IPv4 or IPv6 address of the backend.",
        json_schema_extra=validations(cel("isIP(self)", "address must be an IPv4 or IPv6 address")),
    )
    port: int = Field(ge=1, le=65535, description="Port of the backend.")


class InferenceServiceEndpoint(Model):
    """A KServe InferenceService in this namespace; its predictor address is read from its status."""

    name: ObjectName = Field(description="Name of the InferenceService.")
    port: int = Field(default=80, ge=1, le=65535, description="Port of the predictor service.")


class InferencePoolEndpoint(Model):
    """A Gateway API Inference Extension InferencePool in this namespace."""

    name: ObjectName = Field(description="Name of the InferencePool.")


class Endpoint(Model):
    """Where the backend is. Exactly one field is set."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                "[has(self.fqdn), has(self.ip), has(self.inferenceService), has(self.inferencePool),"
                " has(self.backendRef)].filter(x, x).size() == 1",
                "endpoint must set exactly one of fqdn, ip, inferenceService, inferencePool or backendRef",
            )
        )
    }

    fqdn: FQDNEndpoint | None = Field(default=None, description="A DNS name and port.")
    ip: IPEndpoint | None = Field(default=None, description="An IP address and port.")
    inference_service: InferenceServiceEndpoint | None = Field(
        default=None, description="A KServe InferenceService in this namespace."
    )
    inference_pool: InferencePoolEndpoint | None = Field(
        default=None,
        description="An InferencePool in this namespace (routed at route level by VirtualModels).",
    )
    backend_ref: LocalObjectReference | None = Field(
        default=None,
        description="An existing Envoy Gateway Backend in this namespace: referenced, never modified.",
    )

    @property
    def kind(self) -> str:
        for kind in ("fqdn", "ip", "inference_service", "inference_pool", "backend_ref"):
            if getattr(self, kind) is not None:
                return kind
        raise ValueError("endpoint sets none of its fields")


class TLS(Model):
    """TLS from the gateway to the backend."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.wellKnownCACertificates) && has(self.caCertificateRefs)"
                " && size(self.caCertificateRefs) > 0)",
                "tls may set wellKnownCACertificates or caCertificateRefs, not both",
            ),
            cel(
                "!(has(self.insecureSkipVerify) && self.insecureSkipVerify"
                " && (has(self.wellKnownCACertificates) || has(self.caCertificateRefs)))",
                "tls.insecureSkipVerify cannot be combined with CA certificates",
            ),
        )
    }

    sni: Hostname | None = Field(default=None, description="Server name sent in the TLS handshake.")
    well_known_ca_certificates: Literal["System"] | None = Field(
        default=None, alias="wellKnownCACertificates", description="Trust the system's CA bundle."
    )
    ca_certificate_refs: list[LocalObjectReference] | None = Field(
        default=None, max_length=8, description="ConfigMaps holding CA certificates (key ca.crt)."
    )
    insecure_skip_verify: bool | None = Field(default=None, description="Do not verify the server's certificate.")


class SecretKeyReference(Model):
    """A Secret in this namespace."""

    name: ObjectName = Field(description="Name of the Secret. Its value is never copied anywhere.")


class Credentials(Model):
    """How the gateway authenticates to the backend; the key read from the Secret depends on the type:
    apiKey (APIKey, AnthropicAPIKey, AzureAPIKey), credentials (AWSCredentials, an AWS credentials file),
    client-secret (AzureCredentials), service_account.json (GCPCredentials)."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.type != 'AWSCredentials' || has(self.region)",
                "credentials of type AWSCredentials need region",
            ),
            cel(
                "self.type != 'AzureCredentials' || (has(self.clientID) && has(self.tenantID))",
                "credentials of type AzureCredentials need clientID and tenantID",
            ),
            cel(
                "self.type != 'GCPCredentials' || (has(self.projectName) && has(self.region))",
                "credentials of type GCPCredentials need projectName and region",
            ),
        )
    }

    type: CredentialType = Field(description="Credential type, as Envoy AI Gateway's BackendSecurityPolicy.")
    secret_ref: SecretKeyReference = Field(description="The Secret holding the credential.")
    region: str | None = Field(default=None, max_length=64, description="AWS or GCP region.")
    profile: str | None = Field(default=None, max_length=128, description="AWS credentials file profile.")
    client_id: str | None = Field(
        default=None, alias="clientID", max_length=128, description="Azure application (client) ID."
    )
    tenant_id: str | None = Field(default=None, alias="tenantID", max_length=128, description="Azure tenant ID.")
    project_name: str | None = Field(default=None, max_length=128, description="GCP project name.")


class HeaderValue(Model):
    name: HeaderName = Field(description="Header name.")
    value: HeaderValueText = Field(description="Header value.")


_CREDENTIAL_HEADER_LIST = ", ".join(f"'{h}'" for h in CREDENTIAL_HEADERS)


class HeaderMutation(Model):
    """Headers set on or removed from requests to this backend."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                f"!has(self.set) || self.set.all(h, !(h.name.lowerAscii() in [{_CREDENTIAL_HEADER_LIST}]))",
                f"headerMutation must not set credential or session headers ({', '.join(CREDENTIAL_HEADERS)}): "
                "put the secret in a Secret and reference it from spec.credentials",
            ),
        )
    }

    set: list[HeaderValue] | None = Field(default=None, max_length=16, description="Headers to set.")
    remove: list[HeaderName] | None = Field(default=None, max_length=16, description="Headers to remove.")


class BodyField(Model):
    path: str = Field(min_length=1, max_length=256, description="Top-level JSON field of the request body.")
    value: str = Field(max_length=4096, description="JSON value to set, e.g. '\"default\"' or 0.2.")


class BodyMutation(Model):
    """Top-level JSON fields set on or removed from request bodies sent to this backend."""

    set: list[BodyField] | None = Field(default=None, max_length=16, description="Fields to set.")
    remove: list[str] | None = Field(default=None, max_length=16, description="Fields to remove.")


QuotaDuration = Literal["1s", "1m", "1h", "1d"]


class QuotaLimit(Model):
    limit: int = Field(ge=1, description="Tokens allowed per duration.")
    duration: QuotaDuration = Field(description="Window of the quota: 1s, 1m, 1h or 1d.")


class ModelQuota(Model):
    model_name: HeaderValueText = Field(max_length=256, description="Model name as sent to the backend.")
    limit: int = Field(ge=1, description="Tokens allowed per duration for this model.")
    duration: QuotaDuration = Field(description="Window of the quota: 1s, 1m, 1h or 1d.")


class Quota(Model):
    """Token quota for the backend, enforced by Envoy AI Gateway's QuotaPolicy."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.service) || (has(self.perModel) && size(self.perModel) > 0)",
                "quota needs service or perModel"),
            cel("!has(self.perModel) || self.perModel.all(a, self.perModel.exists_one(b, a.modelName == b.modelName))",
                "quota.perModel model names must be unique"),
        )
    }

    service: QuotaLimit | None = Field(default=None, description="Quota for the whole backend.")
    per_model: list[ModelQuota] | None = Field(default=None, max_length=64, description="Quota per model.")


class ManagedAIServiceBackendSpec(Model):
    """One LLM backend: the operator writes the Envoy Gateway Backend, the AI Gateway AIServiceBackend,
    its BackendSecurityPolicy and QuotaPolicy, named like this object."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.tls) || !(has(self.endpoint.backendRef) || has(self.endpoint.inferencePool))",
                "tls applies to fqdn, ip and inferenceService endpoints; an existing Backend or an "
                "InferencePool carries its own",
            ),
            cel(
                "!has(self.quota) || !has(self.endpoint.inferencePool)",
                "quota applies through an AIServiceBackend, which an inferencePool endpoint does not have",
            ),
        )
    }

    schema_: APISchema = Field(alias="schema", description="The API the backend speaks.")
    endpoint: Endpoint = Field(description="Where the backend is: exactly one of its fields.")
    tls: TLS | None = Field(default=None, description="TLS to the backend; plaintext when unset.")
    credentials: Credentials | None = Field(default=None, description="Credentials from a Secret.")
    header_mutation: HeaderMutation | None = Field(default=None, description="Request headers to set or remove.")
    body_mutation: BodyMutation | None = Field(default=None, description="Request body fields to set or remove.")
    quota: Quota | None = Field(default=None, description="Token quota, as an AI Gateway QuotaPolicy.")


class ResolvedEndpoint(Model):
    address: str | None = Field(default=None, description="Host name or IP the gateway connects to.")
    port: int | None = Field(default=None, description="Port the gateway connects to.")
    url: str | None = Field(default=None, description="The endpoint as a URL, for people.")


class ChildRef(Model):
    api_version: str = Field(description="API version of the child.")
    kind: str = Field(description="Kind of the child.")
    name: str = Field(description="Name of the child, in this namespace.")


class ManagedAIServiceBackendStatus(StatusBase):
    """What the operator observed and wrote."""

    endpoint: ResolvedEndpoint | None = Field(default=None, description="The resolved endpoint.")
    endpoint_summary: str | None = Field(default=None, description="The endpoint in one word, for kubectl get.")
    ai_gateway_api_version: str | None = Field(
        default=None, description="The Envoy AI Gateway API version written (v1beta1 or v1alpha1)."
    )
    routing: Literal["Backend", "InferencePool"] | None = Field(
        default=None,
        description="Backend: VirtualModels route to the AIServiceBackend. InferencePool: they put the "
        "InferencePool itself into their route rule (route-level routing).",
    )
    inference_pool: str | None = Field(default=None, description="The InferencePool, for route-level routing.")
    children: list[ChildRef] = Field(default_factory=list, description="Objects the operator owns for this one.")


# Root-level rules (on metadata.name): emitted by crdgen at the root of the CRD's schema.
ROOT_VALIDATIONS = [
    name_length_rule(MAX_OWNER_NAME_LENGTH, "it is the value of the modeltraffic.io/owner-name label of the "
                     "Backend, AIServiceBackend, BackendSecurityPolicy and QuotaPolicy written for it"),
]


class ManagedAIServiceBackend(Model):
    """An LLM backend managed end to end: Backend, AIServiceBackend, credentials and quota."""

    spec: ManagedAIServiceBackendSpec
    status: ManagedAIServiceBackendStatus | None = None
