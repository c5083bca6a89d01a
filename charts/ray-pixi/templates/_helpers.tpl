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

{{/*
The installed release's MutatingWebhookConfiguration as JSON ("{}" when absent): on a rotation
of the generated certificate its caBundle names the CA the running webhook still serves from.
*/}}
{{- define "ray-pixi.existingWebhookConfiguration" -}}
{{- lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" (include "ray-pixi.fullname" .) | toJson -}}
{{- end -}}

{{/* Where the webhook certificate is mounted in the operator container. */}}
{{- define "ray-pixi.webhookTLSDir" -}}
/etc/ray-pixi/webhook-tls
{{- end -}}

{{/* The opt-in label a RayCluster carries to be mutated (ray_pixi_operator.names.ENABLED_LABEL). */}}
{{- define "ray-pixi.optInLabelKey" -}}
ray-pixi.io/enabled
{{- end -}}

{{/* The reconciler's Deployment name (and its ServiceAccount's, when the chart creates it). */}}
{{- define "ray-pixi.reconcilerName" -}}
{{- printf "%s-reconciler" (include "ray-pixi.fullname" .) -}}
{{- end -}}

{{/* Labels that select the reconciler pod; never change them after a release exists. */}}
{{- define "ray-pixi.reconcilerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ray-pixi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: reconciler
{{- end -}}

{{/* The reconciler's ServiceAccount: its own when the chart creates them, else the given one. */}}
{{- define "ray-pixi.reconcilerServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- printf "%s-reconciler" (include "ray-pixi.serviceAccountName" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "ray-pixi.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/*
Whether the API server evaluates a webhook's matchConditions: GA in Kubernetes 1.30, beta and
on by default since 1.28. Older servers would drop the field silently; the UPDATE webhook then
receives every UPDATE and fails open (failurePolicy Ignore), and the operator applies the same
rule itself (ray_pixi_operator.admission.needs_admission).
*/}}
{{- define "ray-pixi.matchConditionsSupported" -}}
{{- semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version -}}
{{- end -}}

{{/*
The ray-pixi.io/* annotations of object (new) and oldObject, minus the reconciler's own
(status, reported), differ. CEL has no variables in webhook matchConditions, hence the repetition.
*/}}
{{- define "ray-pixi.celAnnotationsChanged" -}}
(has(object.metadata.annotations) ? object.metadata.annotations : {}).exists(k, k.startsWith('ray-pixi.io/') && k != 'ray-pixi.io/status' && k != 'ray-pixi.io/reported' && (!has(oldObject.metadata.annotations) || !(k in oldObject.metadata.annotations) || oldObject.metadata.annotations[k] != object.metadata.annotations[k])) || (has(oldObject.metadata.annotations) ? oldObject.metadata.annotations : {}).exists(k, k.startsWith('ray-pixi.io/') && k != 'ray-pixi.io/status' && k != 'ray-pixi.io/reported' && (!has(object.metadata.annotations) || !(k in object.metadata.annotations)))
{{- end -}}

{{/* A pod template of object (new) differs from oldObject's. */}}
{{- define "ray-pixi.celTemplatesChanged" -}}
object.spec.headGroupSpec.template != oldObject.spec.headGroupSpec.template || (has(object.spec.workerGroupSpecs) ? object.spec.workerGroupSpecs.map(g, g.template) : []) != (has(oldObject.spec.workerGroupSpecs) ? oldObject.spec.workerGroupSpecs.map(g, g.template) : [])
{{- end -}}

{{/*
The RAY_PIXI_* env vars of an operator container: exactly what ray_pixi_operator.settings
reads (an empty value means "not set" there). (dict "root" $ "webhook" bool)
*/}}
{{- define "ray-pixi.operatorEnv" -}}
{{- $ := .root -}}
{{- $cache := $.Values.injection.cache -}}
{{- $tlsDir := include "ray-pixi.webhookTLSDir" $ -}}
{{- $pullSecrets := list -}}
{{- range $.Values.injection.payloadImage.pullSecrets -}}
{{- $pullSecrets = append $pullSecrets .name -}}
{{- end -}}
- name: RAY_PIXI_PAYLOAD_IMAGE
  value: {{ include "ray-pixi.payloadImage" $ | quote }}
- name: RAY_PIXI_PAYLOAD_IMAGE_PULL_POLICY
  value: {{ $.Values.injection.payloadImage.pullPolicy | quote }}
- name: RAY_PIXI_PAYLOAD_IMAGE_PULL_SECRETS
  value: {{ join "," $pullSecrets | quote }}
- name: RAY_PIXI_PIXI_VERSION
  value: {{ $.Values.injection.pixiVersion | quote }}
- name: RAY_PIXI_CACHE_VOLUME
  value: {{ $cache.volume | quote }}
# The operator accepts a size limit only for emptyDir.
- name: RAY_PIXI_CACHE_SIZE_LIMIT
  value: {{ ternary $cache.sizeLimit "" (eq $cache.volume "emptyDir") | quote }}
# Also the defaults for RayClusters that pick another kind by annotation.
- name: RAY_PIXI_CACHE_HOST_PATH
  value: {{ $cache.hostPath | quote }}
- name: RAY_PIXI_CACHE_HOST_PATH_PREPARE
  value: {{ $cache.prepareHostPath | default false | quote }}
- name: RAY_PIXI_CACHE_PVC_NAME
  value: {{ $cache.pvcName | quote }}
- name: RAY_PIXI_PLUGIN_CACHE_SIZE_GB
  value: {{ $cache.pluginCacheSizeGB | quote }}
- name: RAY_PIXI_DISK_BUDGET_GB
  value: {{ ternary "" (toString $cache.diskBudgetGB) (kindIs "invalid" $cache.diskBudgetGB) | quote }}
- name: RAY_PIXI_PIXI_CONFIG_MAP
  value: {{ $.Values.injection.pixiConfig.configMap | quote }}
- name: RAY_PIXI_PIXI_AUTH_SECRET
  value: {{ $.Values.injection.pixiConfig.authSecret | quote }}
- name: RAY_PIXI_INIT_CONTAINER_CPU
  value: {{ $.Values.injection.initContainerCPU | quote }}
- name: RAY_PIXI_INIT_CONTAINER_MEMORY
  value: {{ $.Values.injection.initContainerMemory | quote }}
- name: RAY_PIXI_WEBHOOK_PORT
  value: {{ $.Values.webhook.port | quote }}
- name: RAY_PIXI_WEBHOOK_HOST
  value: {{ ternary (index (include "ray-pixi.webhookDNSNames" $ | fromJsonArray) 2) "" .webhook | quote }}
- name: RAY_PIXI_WEBHOOK_CERT_FILE
  value: {{ ternary (printf "%s/tls.crt" $tlsDir) "" .webhook | quote }}
- name: RAY_PIXI_WEBHOOK_KEY_FILE
  value: {{ ternary (printf "%s/tls.key" $tlsDir) "" .webhook | quote }}
# The chart owns the MutatingWebhookConfiguration: kopf must not manage one.
- name: RAY_PIXI_WEBHOOK_MANAGED
  value: ""
- name: RAY_PIXI_WEBHOOK_CERT_RELOAD_SECONDS
  value: {{ $.Values.webhook.tls.reloadSeconds | quote }}
- name: RAY_PIXI_WEBHOOK_DRAIN_SECONDS
  value: {{ ternary $.Values.webhook.drainSeconds 0 .webhook | quote }}
- name: RAY_PIXI_NAMESPACES
  value: {{ join "," $.Values.namespaces | quote }}
- name: RAY_PIXI_HEALTH_PORT
  value: {{ $.Values.healthPort | quote }}
- name: RAY_PIXI_LOG_LEVEL
  value: {{ $.Values.logLevel | quote }}
{{- end -}}
