{{/* The payload processor chart's values (payloadProcessor.*) over the Go
     chart's (bbr.*): every template starts here, and then reads bbr.*
     alone. Idempotent: the merge is done once per render. */}}
{{- define "bbr.init" -}}
{{- if not .Values.bbr._merged -}}
{{- $pp := deepCopy (.Values.payloadProcessor | default dict) -}}
{{- $merged := mergeOverwrite (deepCopy .Values.bbr) $pp -}}
{{- $_ := set $merged "_merged" true -}}
{{- $_ := set .Values "bbr" $merged -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "bbr.labels" -}}
app.kubernetes.io/name: bbr-extproc
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: body-based-router
app.kubernetes.io/part-of: inference-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The selector: the Go chart's, so that an upgrade from it keeps the
     (immutable) Deployment selector. */}}
{{- define "bbr.selector" -}}
app: {{ .Values.bbr.name }}
{{- end -}}

{{- define "bbr.serviceAccount" -}}
{{ .Values.bbr.name }}-{{ .Release.Name }}
{{- end -}}

{{/* registry/repository:tag, or v0.5.1's hub/name:tag when hub is set. */}}
{{- define "bbr.image" -}}
{{- $i := .Values.bbr.image -}}
{{- $tag := toString (default .Chart.AppVersion $i.tag) -}}
{{- if $i.hub -}}
{{ $i.hub }}/{{ default "bbr-extproc" $i.name }}:{{ $tag }}
{{- else if $i.name -}}
{{- fail "bbr.image.name needs bbr.image.hub (v0.5.1's spelling: hub/name:tag); or set bbr.image.registry and bbr.image.repository" -}}
{{- else -}}
{{ $i.registry }}/{{ $i.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* TLS on the ext_proc port: bbr.secureServing, else flags.secure-serving,
     else on except for envoy-gateway (h2c to the Service). */}}
{{- define "bbr.secure" -}}
{{- $flags := .Values.bbr.flags | default dict -}}
{{- if kindIs "bool" .Values.bbr.secureServing -}}
{{ .Values.bbr.secureServing }}
{{- else if hasKey $flags "secure-serving" -}}
{{ index $flags "secure-serving" }}
{{- else -}}
{{ ne .Values.provider.name "envoy-gateway" }}
{{- end -}}
{{- end -}}

{{/* Whether the base-model ConfigMap watch is on: the Go router's
     base-model-to-header plugin, listed or implied by an empty list; with
     a payload processor config (customConfig), declared in it. */}}
{{- define "bbr.baseModels" -}}
{{- $on := true -}}
{{- if .Values.bbr.customConfig -}}
{{- $on = false -}}
{{- range (.Values.bbr.customConfig.plugins | default list) -}}
{{- if eq .type "base-model-to-header" -}}{{- $on = true -}}{{- end -}}
{{- end -}}
{{- else if .Values.bbr.plugins -}}
{{- $on = false -}}
{{- range .Values.bbr.plugins -}}
{{- if eq .type "base-model-to-header" -}}{{- $on = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{ $on }}
{{- end -}}

{{/* Whether traces are exported (--tracing): bbr.tracing.enabled, or
     flags.tracing. */}}
{{- define "bbr.tracing" -}}
{{- $flags := .Values.bbr.flags | default dict -}}
{{ or (.Values.bbr.tracing | default dict).enabled (index $flags "tracing" | default false) }}
{{- end -}}

{{/* Whether /metrics needs a bearer token (--metrics-endpoint-auth):
     bbr.metricsEndpointAuth.enabled, or flags.metrics-endpoint-auth. */}}
{{- define "bbr.metricsAuth" -}}
{{- $flags := .Values.bbr.flags | default dict -}}
{{ or (.Values.bbr.metricsEndpointAuth | default dict).enabled (index $flags "metrics-endpoint-auth" | default false) }}
{{- end -}}

{{/* Whether the InferencePools' model servers are polled for their
     models (--discover-inference-pools). */}}
{{- define "bbr.discoverPools" -}}
{{ (.Values.bbr.discovery | default dict).inferencePools | default false }}
{{- end -}}

{{/* Whether the pod talks to the API server: the ConfigMap watch, the
     InferencePools read for discovery, or the token reviews of /metrics. */}}
{{- define "bbr.apiAccess" -}}
{{ or (eq (include "bbr.baseModels" .) "true") (eq (include "bbr.metricsAuth" .) "true") (eq (include "bbr.discoverPools" .) "true") }}
{{- end -}}


{{/* Whether an ext_proc event is sent (provider.supportedEvents.<name>):
     request events by default, response events only when asked (bbr
     answers them unchanged; each costs a round trip). */}}
{{- define "bbr.event" -}}
{{- $events := .root.Values.provider.supportedEvents | default dict -}}
{{- if hasKey $events .name -}}
{{ index $events .name }}
{{- else -}}
{{ hasPrefix "request" .name }}
{{- end -}}
{{- end -}}

{{/* Whether bbr runs inside the gateway's Envoy (bbr.mode module: the
     dynamic module libbbr_envoy.so) instead of as the bbr-extproc
     Deployment (ext_proc, the default). */}}
{{- define "bbr.module" -}}
{{ eq (.Values.bbr.mode | default "ext_proc") "module" }}
{{- end -}}

{{/* The rules file as the gateway's Envoy sees it in module mode: the
     rules ConfigMap mounted at the same place as in bbr-extproc's pod. */}}
{{- define "bbr.moduleRulesDir" -}}
/etc/bbr/rules
{{- end -}}

{{/* The module's filter configuration (docs/envoy-module.md), as JSON
     text: bbr.module.config, and the rules file when there are rules. */}}
{{- define "bbr.moduleConfig" -}}
{{- $module := .Values.bbr.module | default dict -}}
{{- $config := deepCopy ($module.config | default dict) -}}
{{- if .Values.bbr.rules -}}
{{- $_ := set $config "rules_file" (printf "%s/rules.yaml" (include "bbr.moduleRulesDir" .)) -}}
{{- end -}}
{{ toJson $config }}
{{- end -}}

{{/* The spec of the Gateway's EnvoyProxy in module mode, before
     provider.envoyGateway.envoyProxy is merged over it. */}}
{{- define "bbr.envoyProxySpec" -}}
{{- $module := .Values.bbr.module | default dict }}
{{- $dir := $module.directory | default "/var/lib/bbr-module" }}
{{- $imageVolume := eq ($module.source | default "imageVolume") "imageVolume" }}
mergeType: StrategicMerge
dynamicModules:
- name: bbr
  source:
    type: Local
    local:
      path: {{ printf "%s/libbbr_envoy.so" $dir }}
{{- if $imageVolume }}
provider:
  type: Kubernetes
  kubernetes:
    envoyDeployment:
      container:
        volumeMounts:
        - name: bbr-module
          mountPath: {{ $dir }}
          readOnly: true
        {{- if .Values.bbr.rules }}
        - name: bbr-rules
          mountPath: {{ include "bbr.moduleRulesDir" . }}
          readOnly: true
        {{- end }}
      pod:
        volumes:
        - name: bbr-module
          image:
            reference: {{ include "bbr.image" . | quote }}
            pullPolicy: {{ .Values.bbr.image.pullPolicy | default "IfNotPresent" }}
        {{- if .Values.bbr.rules }}
        - name: bbr-rules
          configMap:
            name: {{ .Values.bbr.name }}-rules
        {{- end }}
{{- end }}
{{- end -}}
