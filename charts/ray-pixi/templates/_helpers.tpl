{{/* vim: set filetype=mustache: */}}

{{/* The chart name. */}}
{{- define "ray-pixi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: the release name, suffixed with the chart name unless it
already contains it. Truncated so that "<fullname>-test-webhook" (the longest derived name)
stays a valid 63-character DNS label.
*/}}
{{- define "ray-pixi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ray-pixi.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ray-pixi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pod; never change them after a release exists. */}}
{{- define "ray-pixi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ray-pixi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object. */}}
{{- define "ray-pixi.labels" -}}
app.kubernetes.io/name: {{ include "ray-pixi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ray-pixi
helm.sh/chart: {{ include "ray-pixi.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ray-pixi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ray-pixi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from (dict "image" <repository/tag/digest values> "fallback" <dict>):
empty fields of the image fall back to the fallback's, then the tag to the chart's
appVersion. A digest wins over the tag for pulling; both are kept for readability.
*/}}
{{- define "ray-pixi.imageRef" -}}
{{- $img := .image -}}
{{- $fb := .fallback -}}
{{- $repo := $img.repository | default $fb.repository -}}
{{- $tag := $img.tag | default $fb.tag | default .appVersion -}}
{{- $digest := $img.digest | default (ternary $fb.digest "" (empty $img.repository)) -}}
{{- $repo -}}
{{- if $tag }}:{{ $tag }}{{ end -}}
{{- if $digest }}@{{ $digest }}{{ end -}}
{{- end -}}

{{/* The operator image. */}}
{{- define "ray-pixi.image" -}}
{{- include "ray-pixi.imageRef" (dict "image" .Values.image "fallback" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/* The payload image the injected init container runs; defaults to the operator image. */}}
{{- define "ray-pixi.payloadImage" -}}
{{- include "ray-pixi.imageRef" (dict "image" .Values.injection.payloadImage "fallback" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "ray-pixi.webhookServiceName" -}}
{{- printf "%s-webhook" (include "ray-pixi.fullname" .) -}}
{{- end -}}

{{- define "ray-pixi.webhookTLSSecretName" -}}
{{- printf "%s-webhook-tls" (include "ray-pixi.fullname" .) -}}
{{- end -}}

{{/* The DNS names the API server may use for the webhook Service; all go into the cert. */}}
{{- define "ray-pixi.webhookDNSNames" -}}
{{- $svc := include "ray-pixi.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/*
The URL path the operator's webhook server serves the RayCluster mutation on: kopf serves
each admission handler at "/<handler id>" (ray_pixi_operator.names.WEBHOOK_PATH).
*/}}
{{- define "ray-pixi.webhookPath" -}}
/inject-raycluster
{{- end -}}

{{/*
The installed release's webhook TLS Secret as JSON ("{}" when absent). `lookup` queries the
cluster during install/upgrade and returns nothing under `helm template` or a client-side
dry run; see templates/webhook.yaml for what follows from that.
*/}}
{{- define "ray-pixi.existingWebhookTLSSecret" -}}
{{- lookup "v1" "Secret" .Release.Namespace (include "ray-pixi.webhookTLSSecretName" .) | toJson -}}
{{- end -}}

{{/* Where the webhook certificate is mounted in the operator container. */}}
{{- define "ray-pixi.webhookTLSDir" -}}
/etc/ray-pixi/webhook-tls
{{- end -}}

{{/* The opt-in label a RayCluster carries to be mutated (ray_pixi_operator.names.ENABLED_LABEL). */}}
{{- define "ray-pixi.optInLabelKey" -}}
ray-pixi.io/enabled
{{- end -}}
