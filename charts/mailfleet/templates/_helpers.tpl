{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "mailfleet.fullname" -}}
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

{{- define "mailfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mailfleet.labels" -}}
{{ include "mailfleet.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mailfleet
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The metrics Service's name: also the `job` label Prometheus gives the operator's series. */}}
{{- define "mailfleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The admission webhook's Service (its DNS names are in the webhook's certificate). */}}
{{- define "mailfleet.webhookServiceName" -}}
{{- printf "%s-webhook" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.dmarcServiceName" -}}
{{- printf "%s-dmarc" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Arguments of `mailfleet operator`. */}}
{{- define "mailfleet.operatorArgs" -}}
- operator
{{- if .Values.watch.allNamespaces }}
- --all-namespaces
{{- else }}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.namespaces must list at least one namespace when watch.allNamespaces is false" }}
{{- end }}
{{- range .Values.watch.namespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- if .Values.peering.enabled }}
- --peering={{ .Values.peering.name }}
{{- else }}
- --standalone
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.liveness.port }}/healthz
- --metrics-port={{ .Values.metrics.port }}
- --engine-image={{ default (include "mailfleet.image" .) .Values.engineImage }}
{{- if .Values.webhook.enabled }}
- --webhook-listen=0.0.0.0:{{ .Values.webhook.port }}
{{- if .Values.webhook.certManager.enabled }}
- --webhook-cert-dir=/var/run/mailfleet/webhook
{{- else }}
- --webhook-tls-secret={{ include "mailfleet.fullname" . }}-webhook-tls
- --webhook-service={{ include "mailfleet.webhookServiceName" . }}
- --webhook-configuration={{ include "mailfleet.fullname" . }}
- --webhook-work-dir=/tmp/webhook
{{- end }}
{{- end }}
{{- if .Values.dmarcReports.enabled }}
- --dmarc-listen=0.0.0.0:{{ .Values.dmarcReports.port }}
- --dmarc-token-file=/var/run/mailfleet/dmarc/token
- --dmarc-url=http://{{ include "mailfleet.dmarcServiceName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.dmarcReports.port }}
{{- end }}
{{- if .Values.verbose }}
- --verbose
{{- end }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}
