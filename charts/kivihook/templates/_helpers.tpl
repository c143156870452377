{{/*
The roles this chart deploys, in order. One image, one Deployment per role.
*/}}
{{- define "kivihook.roles" -}}
ingest dispatcher scheduler
{{- end }}

{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "kivihook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Kept short enough that "<fullname>-dispatcher" fits in 63.
*/}}
{{- define "kivihook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "kivihook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "kivihook.labels" -}}
helm.sh/chart: {{ include "kivihook.chart" . }}
{{ include "kivihook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kivihook
{{- end }}

{{/*
Selector labels of the whole release (every role).
*/}}
{{- define "kivihook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kivihook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one role's objects. Call with (dict "root" $ "role" "dispatcher").
*/}}
{{- define "kivihook.roleLabels" -}}
{{ include "kivihook.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/*
Selector labels of one role's pods. Call with (dict "root" $ "role" "dispatcher").
*/}}
{{- define "kivihook.roleSelectorLabels" -}}
{{ include "kivihook.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/*
Name of one role's objects. Call with (dict "root" $ "role" "dispatcher").
*/}}
{{- define "kivihook.roleName" -}}
{{- printf "%s-%s" (include "kivihook.fullname" .root) .role }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "kivihook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kivihook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the connection URLs, tokens and secret key: the user's, or the chart's.
*/}}
{{- define "kivihook.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "kivihook.fullname" . }}
{{- end }}
{{- end }}

{{/*
The container image reference; a digest wins over a tag, the tag defaults to appVersion.
*/}}
{{- define "kivihook.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether something other than the Deployment's own replica count sizes a role.
Call with (dict "root" $ "role" "dispatcher").
*/}}
{{- define "kivihook.autoscaled" -}}
{{- $values := index .root.Values .role }}
{{- if or (dig "autoscaling" "enabled" false $values) (and (eq .role "dispatcher") .root.Values.dispatcher.keda.enabled) }}true{{ end }}
{{- end }}

{{/*
The RabbitMQ queue that first delivery attempts wait in (KEDA scales dispatchers on it).
*/}}
{{- define "kivihook.deliveriesQueue" -}}
{{- printf "%s.deliveries" .Values.prefix }}
{{- end }}

{{/*
The RabbitMQ queue that due retries wait in.
*/}}
{{- define "kivihook.retriesQueue" -}}
{{- printf "%s.retries" .Values.prefix }}
{{- end }}

{{/*
Settings that, when changed, must restart a role's pods (hashed into a pod annotation).
Only ingest reads the declared webhooks. Call with (dict "root" $ "role" "dispatcher").
*/}}
{{- define "kivihook.configChecksum" -}}
{{- $values := .root.Values }}
{{- $config := dict "prefix" $values.prefix "config" $values.config "secret" $values.secret "existingSecret" $values.existingSecret }}
{{- if eq .role "ingest" }}
{{- $_ := set $config "webhooks" $values.webhooks }}
{{- end }}
{{- toJson $config | sha256sum }}
{{- end }}

{{/*
Checks across values that a JSON schema cannot express.
*/}}
{{- define "kivihook.validate" -}}
{{- if and .Values.dispatcher.autoscaling.enabled .Values.dispatcher.keda.enabled }}
{{- fail "dispatcher.autoscaling.enabled and dispatcher.keda.enabled are exclusive: KEDA manages its own HorizontalPodAutoscaler. Enable one." }}
{{- end }}
{{- range $role := list "ingest" "dispatcher" }}
{{- $autoscaling := (index $.Values $role).autoscaling }}
{{- if and $autoscaling.enabled (gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas must not exceed %s.autoscaling.maxReplicas" $role $role) }}
{{- end }}
{{- end }}
{{- if and .Values.dispatcher.keda.enabled (gt (int .Values.dispatcher.keda.minReplicaCount) (int .Values.dispatcher.keda.maxReplicaCount)) }}
{{- fail "dispatcher.keda.minReplicaCount must not exceed dispatcher.keda.maxReplicaCount" }}
{{- end }}
{{- $names := dict }}
{{- range $i, $webhook := .Values.webhooks }}
{{- if hasKey $names $webhook.name }}
{{- fail (printf "webhooks[%d]: the name %q is used twice; webhooks are matched by name" $i $webhook.name) }}
{{- end }}
{{- $_ := set $names $webhook.name true }}
{{- end }}
{{- end }}
