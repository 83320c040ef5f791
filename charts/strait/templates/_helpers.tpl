{{/* Common names and labels. */}}

{{- define "strait.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "strait.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (include "strait.tag" .root) -}}
{{- end -}}

{{- define "strait.labels" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "strait.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "strait.selector" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "strait.webhookService" -}}strait-injector{{- end -}}
{{- define "strait.identityService" -}}strait-identity{{- end -}}
{{- define "strait.destinationService" -}}strait-destination{{- end -}}
{{- define "strait.webhookSecret" -}}strait-injector-webhook-tls{{- end -}}
{{- define "strait.identitySecret" -}}strait-identity-issuer{{- end -}}
{{- define "strait.webhookCaSecret" -}}strait-injector-webhook-ca{{- end -}}
{{- define "strait.identityGeneratedSecret" -}}strait-identity-generated{{- end -}}

{{/* Whether the user supplied the identity material (all of it; identity.yaml refuses part). */}}
{{- define "strait.identitySupplied" -}}
{{- if and (trim .Values.identity.trustAnchorsPEM) (trim .Values.identity.issuer.certPEM) (trim .Values.identity.issuer.keyPEM) -}}true{{- end -}}
{{- end -}}

{{/* Changes with the supplied identity material, so an upgrade that rotates it restarts the control plane, which reads it at start. */}}
{{- define "strait.identityChecksum" -}}
{{- printf "%s\n%s\n%s" .Values.identity.trustAnchorsPEM .Values.identity.issuer.certPEM .Values.identity.issuer.keyPEM | sha256sum -}}
{{- end -}}
