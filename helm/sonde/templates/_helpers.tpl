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

{{/* storage.locations as `name=url,...` for the agent and the operator. */}}
{{- define "sonde.storageLocations" -}}
{{- $out := list -}}
{{- range $name, $url := .Values.storage.locations -}}
{{- $out = append $out (printf "%s=%s" $name $url) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
