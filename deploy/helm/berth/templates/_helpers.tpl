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

{{- define "berth.hasS3" -}}
{{- if .Values.storage.s3.bucket -}}true{{- end -}}
{{- end -}}

{{- define "berth.hasS3Credentials" -}}
{{- if or .Values.storage.s3.existingSecret .Values.storage.s3.accessKey -}}true{{- end -}}
{{- end -}}

{{- define "berth.s3Secret" -}}
{{- if .Values.storage.s3.existingSecret -}}
{{- .Values.storage.s3.existingSecret -}}
{{- else -}}
{{- printf "%s-s3" (include "berth.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The data volume holds something that must last: filesystem blobs or the SQLite file. */}}
{{- define "berth.needsVolume" -}}
{{- if or (not (include "berth.hasS3" .)) (not (include "berth.hasPostgres" .)) -}}true{{- end -}}
{{- end -}}

{{- define "berth.usesClaim" -}}
{{- if and .Values.persistence.enabled (include "berth.needsVolume" .) -}}true{{- end -}}
{{- end -}}

{{- define "berth.hasSigningKey" -}}
{{- if and (eq .Values.auth.mode "token") (or .Values.auth.token.signingKey .Values.auth.token.existingSigningKeySecret) -}}true{{- end -}}
{{- end -}}

{{- define "berth.signingKeySecret" -}}
{{- if .Values.auth.token.existingSigningKeySecret -}}
{{- .Values.auth.token.existingSigningKeySecret -}}
{{- else -}}
{{- printf "%s-token-key" (include "berth.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- include "berth.fullname" . -}}
{{- end -}}
{{- end -}}
