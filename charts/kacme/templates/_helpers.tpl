{{/* The chart name, or nameOverride. */}}
{{- define "kacme.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of resource names: fullnameOverride, else the release name if it contains the chart name,
else "<release>-<name>". */}}
{{- define "kacme.fullname" -}}
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

{{- define "kacme.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the chart: list them with -l app.kubernetes.io/instance=<release>. */}}
{{- define "kacme.labels" -}}
helm.sh/chart: {{ include "kacme.chart" . }}
{{ include "kacme.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kacme
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator Pods. */}}
{{- define "kacme.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kacme.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "kacme.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kacme.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag (tag defaults to the appVersion), or repository@digest. */}}
{{- define "kacme.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The solver image: the operator's own image and tag unless overridden. */}}
{{- define "kacme.solverImage" -}}
{{- $repository := default .Values.image.repository .Values.solver.image.repository }}
{{- if and (not .Values.solver.image.repository) (not .Values.solver.image.tag) .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (default .Chart.AppVersion .Values.image.tag) .Values.solver.image.tag) }}
{{- end }}
{{- end }}

{{- define "kacme.clusterResourceNamespace" -}}
{{- default .Release.Namespace .Values.clusterResourceNamespace }}
{{- end }}

{{- define "kacme.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* The webhook's namespaceSelector: webhook.namespaceSelector in kubectl's equality form (key=value,
key!=value, key, !key; comma-separated), parsed as the operator parses --webhook-namespace-selector, plus
the release namespace and kube-system left out. */}}
{{- define "kacme.webhookNamespaceSelector" -}}
{{- $labels := dict }}
{{- $expressions := list }}
{{- range $item := splitList "," (.Values.webhook.namespaceSelector | toString) }}
{{- $item = trim $item }}
{{- if $item }}
{{- if contains "!=" $item }}
{{- $pair := splitn "!=" 2 $item }}
{{- $expressions = append $expressions (dict "key" (trim $pair._0) "operator" "NotIn" "values" (list (trim $pair._1))) }}
{{- else if contains "=" $item }}
{{- $pair := splitn "=" 2 (replace "==" "=" $item) }}
{{- $_ := set $labels (trim $pair._0) (trim $pair._1) }}
{{- else if hasPrefix "!" $item }}
{{- $expressions = append $expressions (dict "key" (trimPrefix "!" $item | trim) "operator" "DoesNotExist") }}
{{- else if regexMatch "[\\s(]" $item }}
{{- fail (printf "webhook.namespaceSelector: %q: only key=value, key!=value, key and !key are supported" $item) }}
{{- else }}
{{- $expressions = append $expressions (dict "key" $item "operator" "Exists") }}
{{- end }}
{{- end }}
{{- end }}
{{- $excluded := list .Release.Namespace "kube-system" | uniq | sortAlpha }}
{{- $expressions = append $expressions (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded) }}
{{- if $labels }}
matchLabels:
  {{- toYaml $labels | nindent 2 }}
{{- end }}
matchExpressions:
  {{- toYaml $expressions | nindent 2 }}
{{- end }}
