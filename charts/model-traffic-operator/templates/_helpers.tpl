{{/* Names and labels shared by every template. */}}

{{- define "mto.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mto.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mto.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mto.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mto.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mto.labels" -}}
helm.sh/chart: {{ include "mto.chart" . }}
{{ include "mto.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-traffic-operator
{{- end -}}

{{- define "mto.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mto.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mto.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mto.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{/* The namespace and name of the default gateway ("ns/name"), as a list; empty when unset. */}}
{{- define "mto.defaultGatewayParts" -}}
{{- if .Values.defaultGateway -}}
{{- $parts := splitList "/" .Values.defaultGateway -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "defaultGateway must be \"namespace/name\", not %q" .Values.defaultGateway) -}}
{{- end -}}
{{- toJson $parts -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/*
The rules for the watched namespaces (or the whole cluster). kopf lists and watches every kind it has a
handler for; get is the fresh read before each reconcile and the reads of referenced objects.
*/}}
{{- define "mto.watchRules" -}}
# Our kinds: watched and read. ManagedAIServiceBackends and VirtualModels are also children of a
# TrafficConfig (server-side apply: patch, and create for a new one; delete when pruned).
- apiGroups: [modeltraffic.io]
  resources: [managedaiservicebackends, virtualmodels]
  verbs: [get, list, watch, create, patch, delete]
# TrafficConfigs: patch only for its own finalizer (modeltraffic.io/retain-on-delete, spec.deletionPolicy Retain:
# a merge patch of metadata.finalizers); its spec is the user's, never written.
- apiGroups: [modeltraffic.io]
  resources: [trafficconfigs]
  verbs: [get, list, watch, patch]
# Conditions and observedGeneration (merge patch of the status subresource).
- apiGroups: [modeltraffic.io]
  resources: [managedaiservicebackends/status, virtualmodels/status, trafficconfigs/status]
  verbs: [patch]
# Children: Envoy Gateway Backend (also a referenced endpoint), BackendTrafficPolicy and SecurityPolicy.
- apiGroups: [gateway.envoyproxy.io]
  resources: [backends, backendtrafficpolicies, securitypolicies]
  verbs: [get, list, watch, create, patch, delete]
# Children: Envoy AI Gateway objects (an AIServiceBackend is also dry-run applied once to probe whether
# the installed schema accepts an InferencePool).
- apiGroups: [aigateway.envoyproxy.io]
  resources: [aiservicebackends, backendsecuritypolicies, quotapolicies, aigatewayroutes]
  verbs: [get, list, watch, create, patch, delete]
# Read as a backend's endpoint; a TrafficConfig owns one per model version.
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, create, patch, delete]
# Metric templates TrafficConfigs reference: watched (a change reconciles their users), never written.
- apiGroups: [modeltraffic.io]
  resources: [metrictemplates]
  verbs: [list, watch]
# Credentials: the Secret a backend names is read by name (which keys exist), never listed or watched, never
# written: the operator cannot enumerate the Secrets of a namespace, let alone stream their data.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# A CA bundle an analysis' Prometheus names in a ConfigMap key (spec.analysis.prometheus.ca): read by name.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch]
# The Gateway's address; the HTTPRoute the AI Gateway generates from our AIGatewayRoute (its status); the
# ReferenceGrants of a namespace sharing its backends (whether a VirtualModel may route to them).
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes, referencegrants]
  verbs: [get, list, watch]
# An Event on each change of readiness (core/v1 Events, what kubectl describe shows); patch: a repeated rollout
# Event (a failed check) is one Event whose series count grows.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
