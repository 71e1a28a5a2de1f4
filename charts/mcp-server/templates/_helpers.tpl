{{/*
Names and labels. They follow mcpfleet.deploy.kubernetes.manifests: a change there needs the same change here
(tests/charts/test_equivalence.py compares the two).
*/}}

{{/* Every object's name: fullnameOverride (the gateway's <project>-<server>), else the release name. */}}
{{- define "mcp-server.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The Secret of secretEnv: manifests.secret_name. */}}
{{/* The ConfigMap of the non-secret environment (`env` less the names `secretEnv` sets); manifests.config_name. */}}
{{- define "mcp-server.configName" -}}
{{- printf "%s-config" (regexReplaceAll "-+$" (include "mcp-server.fullname" . | trunc 56) "") -}}
{{- end }}

{{/* `env` less the names `secretEnv` sets (the Secret wins), as JSON: manifests.config_env. */}}
{{- define "mcp-server.configEnv" -}}
{{- $env := dict -}}
{{- range $name, $value := .Values.env -}}
{{- if not (hasKey $.Values.secretEnv $name) -}}
{{- $_ := set $env $name ($value | toString) -}}
{{- end -}}
{{- end -}}
{{- toJson $env -}}
{{- end }}

{{- define "mcp-server.secretName" -}}
{{- printf "%s-env" (regexReplaceAll "-+$" (include "mcp-server.fullname" . | trunc 57) "") -}}
{{- end }}

{{/* The server's registry id: server, else the release name. */}}
{{- define "mcp-server.server" -}}
{{- default .Release.Name .Values.server -}}
{{- end }}

{{/* The labels that select the server's pods: manifests.selector. */}}
{{- define "mcp-server.selector" -}}
mcpfleet.io/project: {{ .Values.project | quote }}
mcpfleet.io/server: {{ include "mcp-server.server" . | quote }}
{{- end }}

{{/* Every object's labels, the pods' included: manifests.labels, with Helm as the manager. */}}
{{- define "mcp-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: mcp-server
app.kubernetes.io/instance: {{ include "mcp-server.fullname" . }}
app.kubernetes.io/component: mcp-server
app.kubernetes.io/part-of: mcpfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "mcp-server.selector" . }}
{{- end }}

{{/* namespace, labels and the server-id annotation, below an object's name. */}}
{{- define "mcp-server.metadata" -}}
namespace: {{ .Release.Namespace }}
labels:
  {{- include "mcp-server.labels" . | nindent 2 }}
annotations:
  mcpfleet.io/server-id: {{ include "mcp-server.server" . | quote }}
{{- end }}

{{/* The ServiceAccount the pods run as ("" for none). */}}
{{- define "mcp-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mcp-server.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* "true" when the command runs mcpfleet's adapter (a stdio server served over HTTP). */}}
{{- define "mcp-server.adapter" -}}
{{- $c := .Values.command -}}
{{- if and (ge (len $c) 2) (eq (index $c 0) "mcpfleet") (eq (index $c 1) "adapter") }}true{{ end -}}
{{- end }}

{{/* The image reference: repository[:tag][@digest]. */}}
{{- define "mcp-server.image" -}}
{{- .Values.image.repository -}}
{{- with .Values.image.tag }}:{{ . }}{{ end -}}
{{- with .Values.image.digest }}@{{ . }}{{ end -}}
{{- end }}

{{/* The readiness probe: readinessProbe, with a handler chosen when it has none (manifests.readiness). */}}
{{- define "mcp-server.readinessProbe" -}}
{{- $probe := deepCopy .Values.readinessProbe -}}
{{- if not (or $probe.httpGet $probe.tcpSocket $probe.exec $probe.grpc) -}}
{{- if include "mcp-server.adapter" . -}}
{{- $_ := set $probe "httpGet" (dict "path" "/readyz" "port" "mcp") -}}
{{- else -}}
{{- $_ := set $probe "tcpSocket" (dict "port" "mcp") -}}
{{- end -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end }}
