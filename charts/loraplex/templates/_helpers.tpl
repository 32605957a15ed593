{{/* Chart name, truncated to the 63-character label limit. */}}
{{- define "loraplex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object-name prefix: <release>-loraplex, or <release> when it already contains the name. */}}
{{- define "loraplex.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loraplex.routerName" -}}
{{- printf "%s-router" (include "loraplex.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraplex.operatorName" -}}
{{- printf "%s-operator" (include "loraplex.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraplex.modelCacheClaim" -}}
{{- default (printf "%s-model-cache" (include "loraplex.fullname" .)) .Values.modelCache.existingClaim }}
{{- end }}

{{/* Labels every object carries (see the label contract at the top of values.yaml). */}}
{{- define "loraplex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "loraplex.selectorLabels" . }}
app.kubernetes.io/part-of: loraplex
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "loraplex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "router"). */}}
{{- define "loraplex.componentSelectorLabels" -}}
{{ include "loraplex.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loraplex.componentLabels" -}}
{{ include "loraplex.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels the operator puts on worker pods and Services (loraplex.operator.resources.labels):
the worker NetworkPolicy and ServiceMonitor select these. */}}
{{- define "loraplex.workerSelectorLabels" -}}
app.kubernetes.io/name: loraplex-worker
app.kubernetes.io/component: worker
{{- end }}

{{- define "loraplex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "loraplex.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) }}
{{- end }}

{{/* Role (namespaced) or ClusterRole (clusterWide) for the operator and router. */}}
{{- define "loraplex.roleKind" -}}
{{- if .Values.operator.clusterWide }}ClusterRole{{ else }}Role{{ end }}
{{- end }}

{{/* HF_TOKEN from the referenced Secret; optional so a missing Secret never blocks startup. */}}
{{- define "loraplex.hfTokenEnv" -}}
{{- if .Values.hfToken.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hfToken.existingSecret }}
      key: {{ .Values.hfToken.key }}
      optional: true
{{- end }}
{{- end }}

{{/* The Secret holding the worker secret: values' existingSecret, else the chart's own. */}}
{{- define "loraplex.workerSecretName" -}}
{{- default (printf "%s-worker-secret" (include "loraplex.fullname" .) | trunc 63 | trimSuffix "-") .Values.workerSecret.existingSecret }}
{{- end }}
