{{/* Names and labels of the gateway's objects. */}}

{{/* Every object's name: fullnameOverride, else <release>-mcpfleet (the release name when it has "mcpfleet"). */}}
{{- define "mcpfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "mcpfleet" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-mcpfleet" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{/* The gateway's pods. `app.kubernetes.io/name: mcpfleet` is what charts/mcp-server's NetworkPolicy admits. */}}
{{- define "mcpfleet.selector" -}}
app.kubernetes.io/name: mcpfleet
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcpfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "mcpfleet.selector" . }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: mcpfleet
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mcpfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mcpfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{- define "mcpfleet.sessionSecretName" -}}
{{- default (printf "%s-session" (include "mcpfleet.fullname" .)) .Values.sessionKeys.existingSecret -}}
{{- end }}

{{- define "mcpfleet.envSecretName" -}}
{{- printf "%s-env" (include "mcpfleet.fullname" .) -}}
{{- end }}

{{/* The namespaces the gateway gets a Role in. */}}
{{- define "mcpfleet.managedNamespaces" -}}
{{- toJson (default (list .Release.Namespace) .Values.managedNamespaces | uniq) -}}
{{- end }}

{{/*
The Role's rules: exactly mcpfleet.deploy.kubernetes.rbac (tests/charts/test_rbac.py compares them).
DISCOVERY always; DEPLOYER with deployer: true; LABELLED_SERVICES with discovery.labels: true.
*/}}
{{- define "mcpfleet.rules" -}}
# rbac.DISCOVERY: a server's replicas are its EndpointSlices (list, then watch); a chart entry's Service is
# found by its labels.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [list]
{{- if .Values.deployer }}
# rbac.DEPLOYER: create, scale (to zero and back) and delete the servers of `kubernetes` entries.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [update]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch, delete]
# Written and deleted by name, never read: get or list would show every Secret's data in the namespace.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch, delete]
{{- end }}
{{- if .Values.discovery.labels }}
# rbac.LABELLED_SERVICES: Services labelled for mcpfleet that the registry does not list.
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{/* The registry file: `registry`, with the names clients reach the gateway by added to allowed_hosts. */}}
{{- define "mcpfleet.registry" -}}
{{- $registry := deepCopy .Values.registry -}}
{{- $gateway := default dict $registry.gateway -}}
{{- $service := include "mcpfleet.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) -}}
{{- if .Values.ingress.enabled -}}
{{- $hosts = concat $hosts .Values.ingress.hosts -}}
{{- end -}}
{{- $_ := set $gateway "allowed_hosts" (concat (default list $gateway.allowed_hosts) $hosts | uniq) -}}
{{- if not (hasKey $gateway "shutdown_delay") -}}
{{- /* /readyz answers 503 for 5 s after SIGTERM while the gateway still serves (Plan 9.15) */ -}}
{{- $_ := set $gateway "shutdown_delay" 5 -}}
{{- end -}}
{{- if not (hasKey $gateway "auth") -}}
{{- /* The pod listens on the pod network: with no gateway.auth the chart says so on purpose (NOTES warns) */ -}}
{{- $_ := set $gateway "auth" (dict "anonymous" true) -}}
{{- end -}}
{{- $_ := set $registry "gateway" $gateway -}}
{{- $_ := set $registry "servers" (default dict $registry.servers) -}}
{{- toYaml $registry -}}
{{- end }}

{{/*
Checks of the registry against the Role: what the gateway would do that the RBAC here does not allow fails the
install, naming the value to change (the gateway would otherwise get 403s at run time).
*/}}
{{- define "mcpfleet.checks" -}}
{{- $managed := include "mcpfleet.managedNamespaces" . | fromJsonArray -}}
{{- $gateway := default dict .Values.registry.gateway -}}
{{- if and (eq (toString (default "none" $gateway.discovery)) "labels") (not .Values.discovery.labels) -}}
{{- fail "registry.gateway.discovery is labels: set discovery.labels: true, so the Role may list and watch Services" -}}
{{- end -}}
{{- range $namespace := default list $gateway.discovery_namespaces -}}
{{- if not (has $namespace $managed) -}}
{{- fail (printf "registry.gateway.discovery_namespaces names %q: add it to managedNamespaces, so the gateway gets a Role there" $namespace) -}}
{{- end -}}
{{- end -}}
{{- range $id, $server := default dict .Values.registry.servers -}}
{{- if and (kindIs "map" $server) (has (toString $server.type) (list "kubernetes" "k8s")) $server.namespace -}}
{{- if not (has $server.namespace $managed) -}}
{{- fail (printf "registry.servers.%s.namespace is %q: add it to managedNamespaces, so the gateway gets a Role there" $id $server.namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}
