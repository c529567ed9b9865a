{{- define "berth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "berth.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "berth.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "berth.htpasswdSecret" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-htpasswd" (include "berth.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "berth.hasHtpasswd" -}}
{{- if or .Values.auth.existingSecret .Values.auth.htpasswd -}}true{{- end -}}
{{- end -}}

{{- define "berth.hasPostgres" -}}
{{- if or .Values.metadata.postgres.url .Values.metadata.postgres.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "berth.postgresSecret" -}}
{{- if .Values.metadata.postgres.existingSecret -}}
{{- .Values.metadata.postgres.existingSecret -}}
{{- else -}}
{{- printf "%s-metadata" (include "berth.fullname" .) -}}
{{- end -}}
{{- end -}}
