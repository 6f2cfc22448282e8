{{- define "sonde.labels" -}}
app.kubernetes.io/name: sonde
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sonde.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Whether agents upload through the results server (agent.storageUrl empty). */}}
{{- define "sonde.viaResults" -}}
{{- if not .Values.agent.storageUrl -}}
{{- if not .Values.results.enabled -}}
{{- fail "agent.storageUrl is empty, so results go through the results server: set results.enabled=true, or an s3:// or file:// agent.storageUrl" -}}
{{- end -}}
{{- /* Replicas share the one volume: it must be mountable by all of them. */ -}}
{{- if and (gt (int .Values.results.replicas) 1) (not (and .Values.results.persistence.enabled (has "ReadWriteMany" .Values.results.persistence.accessModes))) -}}
{{- fail "results.replicas > 1 with agent.storageUrl empty needs one volume for all replicas: set results.persistence.accessModes to [ReadWriteMany] (a storage class that offers it), or agent.storageUrl to an s3:// bucket" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The agents' default storage URL. */}}
{{- define "sonde.agentStorageUrl" -}}
{{- if include "sonde.viaResults" . -}}
{{- /* The Service's address from the variables the kubelet gives pods created after it (the chart creates the
Service first): no cluster DNS needed. */ -}}
{{- if .Values.results.tls.secretName -}}
{{- /* By the name the certificate carries; the agent connects to the Service's IP (SONDE_RESULTS_ADDRESS). */ -}}
results+https://sonde-results.{{ .Release.Namespace }}.svc:$(SONDE_RESULTS_SERVICE_PORT_INTAKE)
{{- else -}}
results+http://$(SONDE_RESULTS_SERVICE_HOST):$(SONDE_RESULTS_SERVICE_PORT_INTAKE)
{{- end -}}
{{- else -}}
{{ .Values.agent.storageUrl }}
{{- end -}}
{{- end -}}

{{/* Where the results server keeps results it takes from agents (its volume). */}}
{{- define "sonde.resultsVolumePath" -}}
/var/lib/sonde-results
{{- end -}}

{{/* storage.locations as `name=url,...` for the agent and the operator. */}}
{{- define "sonde.storageLocations" -}}
{{- $out := list -}}
{{- range $name, $url := .Values.storage.locations -}}
{{- $out = append $out (printf "%s=%s" $name $url) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The results server's intake port (a release upgraded with --reuse-values has no results.intakePort: the
default), never one of its other ports, which the server could not bind twice. */}}
{{- define "sonde.intakePort" -}}
{{- $port := .Values.results.intakePort | default 8081 | int -}}
{{- if or (eq $port (int .Values.results.port)) (eq $port (int .Values.results.metricsPort)) -}}
{{- fail (printf "results.intakePort %d is also results.port or results.metricsPort: the intake needs a port of its own" $port) -}}
{{- end -}}
{{ $port }}
{{- end -}}
