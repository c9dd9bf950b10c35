{{/*
The InferencePool's name: inferencePool.name, or the release name.
*/}}
{{- define "picker.poolName" -}}
{{- .Values.inferencePool.name | default .Release.Name | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of picker's Deployment, Service, ServiceAccount and ConfigMap: "<pool>-picker".
A Service name is a DNS-1035 label (63 characters at most, starting with a letter).
*/}}
{{- define "picker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-picker" (include "picker.poolName" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{- define "picker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: the picker pods of this release, and nothing else.
*/}}
{{- define "picker.selectorLabels" -}}
app.kubernetes.io/name: picker
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{/*
Labels of picker's pods; the pool's selector must not match them.
*/}}
{{- define "picker.podLabels" -}}
{{ include "picker.selectorLabels" . }}
app.kubernetes.io/component: endpoint-picker
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "picker.labels" -}}
{{ include "picker.selectorLabels" . }}
app.kubernetes.io/component: endpoint-picker
app.kubernetes.io/part-of: {{ include "picker.poolName" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "picker.chart" . }}
{{- end -}}

{{- define "picker.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Seconds the kubelet waits after SIGTERM before SIGKILL: the preStop sleep, picker's drain,
and a margin to close listeners and exit. Must exceed preStop + drain.
*/}}
{{- define "picker.terminationGracePeriodSeconds" -}}
{{- $min := add (int .Values.preStopSleepSeconds) (int .Values.drainTimeoutSeconds) -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $min) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + drainTimeoutSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $min)) -}}
{{- end -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $min 15 -}}
{{- end -}}
{{- end -}}

{{/*
Checks that fail the render with a message instead of producing a manifest that a
cluster would reject or that would misroute.
*/}}
{{- define "picker.validate" -}}
{{- if .Values.inferencePool.create -}}
{{- if not .Values.inferencePool.modelServers.matchLabels -}}
{{- fail "inferencePool.modelServers.matchLabels is required: the labels of the model-server pods of the pool (e.g. --set inferencePool.modelServers.matchLabels.app=vllm-llama3-8b)" -}}
{{- end -}}
{{- $own := include "picker.podLabels" . | fromYaml -}}
{{- $selectsPicker := true -}}
{{- range $k, $v := .Values.inferencePool.modelServers.matchLabels -}}
{{- if ne (toString (index $own $k | default "")) (toString $v) -}}
{{- $selectsPicker = false -}}
{{- end -}}
{{- end -}}
{{- if $selectsPicker -}}
{{- fail "inferencePool.modelServers.matchLabels selects picker's own pods; use the model servers' labels" -}}
{{- end -}}
{{- end -}}
{{- end -}}
