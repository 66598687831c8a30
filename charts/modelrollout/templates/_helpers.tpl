{{- /* The app name (nameOverride) and the objects' name (fullnameOverride, else the release's name). */ -}}
{{- define "modelrollout.appName" -}}{{ default "modelrollout" .Values.nameOverride | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "modelrollout.name" -}}{{ default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "modelrollout.labels" -}}
app.kubernetes.io/name: {{ include "modelrollout.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
{{- define "modelrollout.selector" -}}
app.kubernetes.io/name: {{ include "modelrollout.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "modelrollout.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
