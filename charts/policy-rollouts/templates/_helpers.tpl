{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "policy-rollouts.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "policy-rollouts.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "policy-rollouts.selectorLabels" -}}
app.kubernetes.io/name: {{ include "policy-rollouts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "policy-rollouts.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "policy-rollouts.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "policy-rollouts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "policy-rollouts.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "policy-rollouts.peeringName" -}}
{{- default (include "policy-rollouts.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/* Namespaces watched in namespace scope (default: the release's), as a list. */}}
{{- define "policy-rollouts.namespaces" -}}
{{- $namespaces := .Values.rbac.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{- define "policy-rollouts.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "policy-rollouts.notificationsSecret" -}}
{{- default (printf "%s-notifications" (include "policy-rollouts.fullname" .)) .Values.notifications.existingSecret -}}
{{- end -}}

{{/*
The operator's rules in the namespaces where PolicyRollouts live: exactly the API calls it makes
(tests/charts/test_chart_rbac.py records them at the API and compares). No wildcards.
*/}}
{{- define "policy-rollouts.rolloutRules" -}}
# PolicyRollouts: kopf lists and watches them and keeps its finalizer (patch); the engine writes status.
- apiGroups: ["policy.rollouts.io"]
  resources: ["policyrollouts"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["policy.rollouts.io"]
  resources: ["policyrollouts/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Everything below is read from watch-backed caches (list and watch, never get), and written only
# when it differs from the cached copy.
# The policy variants; with the router provider also its own Deployment and Service (deleted with the rollout).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Traffic providers: gatewayAPI (HTTPRoute), istio (VirtualService), router (a routing ConfigMap
# read by a router that runs under its own ServiceAccount, Role and RoleBinding).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# get is not called by the operator: it must hold it to grant it to the router's Role (Kubernetes
# refuses a Role that grants more than its creator has).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Not called by the operator: held so that it may grant them to the router's Role (the router
# balances over each variant's ready pods from their EndpointSlices). Read-only.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Each rollout's reward key (docs/security.md): create {rollout}-reward-key once; list/watch keep
# the operator's own ones in a cache (it asks only for those labelled managed-by=policy-rollouts);
# get checks a Secret named by spec.rewardKeySecret before any pod refers to it. No update, patch
# or delete: the operator never rewrites a key (humans rotate it) and the garbage collector removes
# it with its rollout. RBAC cannot narrow further: create and list/watch take no resourceNames, and
# the names are the rollouts'. With rbac.scope=namespace this holds only in the watched namespaces.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create"]
# Offline-evaluation and training Jobs; each reports its result as its Pod's termination message.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end -}}

{{/* The policy-server image the operator's Jobs run by default. */}}
{{- define "policy-rollouts.jobImage" -}}
{{- default (printf "ghcr.io/policy-rollouts/policy-server:%s" .Chart.AppVersion) .Values.jobs.image -}}
{{- end -}}

{{/*
The operator's policy (docs/security.md) as JSON lists, shared by the operator's environment and
the ValidatingAdmissionPolicy so that both enforce the same lists.
*/}}
{{- define "policy-rollouts.allowedPrometheusUrls" -}}
{{- toJson (uniq (prepend .Values.operator.allowedPrometheusUrls .Values.operator.prometheusUrl)) -}}
{{- end -}}

{{- define "policy-rollouts.allowedJobImages" -}}
{{- toJson (uniq (prepend .Values.jobs.allowedImages (include "policy-rollouts.jobImage" .))) -}}
{{- end -}}

{{- define "policy-rollouts.allowedJobServiceAccounts" -}}
{{- toJson (uniq (prepend .Values.jobs.allowedServiceAccounts .Values.jobs.serviceAccount.name)) -}}
{{- end -}}
