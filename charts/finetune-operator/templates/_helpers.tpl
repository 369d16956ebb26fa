{{/* Chart name, truncated to 63 chars (DNS label). */}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "finetune-operator.fullname" -}}
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

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "finetune-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "finetune-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* Names of the configured bands, comma-separated, in order. */}}
{{- define "finetune-operator.bandNames" -}}
{{- $names := list }}
{{- range .Values.priorityClasses.bands }}{{ $names = append $names .name }}{{ end }}
{{- join "," $names }}
{{- end }}

{{/* FINETUNE_ALLOWED_PRIORITY_CLASSES: the explicit list, else every band that does not
preempt (a namespace gets a preempting band only through namespacePriorityClasses). */}}
{{- define "finetune-operator.allowedClasses" -}}
{{- if .Values.allowedPriorityClasses }}
{{- join "," .Values.allowedPriorityClasses }}
{{- else }}
{{- $names := list }}
{{- range .Values.priorityClasses.bands }}
{{- if not (has .name $.Values.priorityClasses.preempting) }}{{ $names = append $names .name }}{{ end }}
{{- end }}
{{- join "," $names }}
{{- end }}
{{- end }}

{{/* RE2 pattern of the default trainer repository as a whole image reference: the repository,
then a tag, a digest, or both. */}}
{{- define "finetune-operator.defaultImagePattern" -}}
{{- $digest := "@sha256:[0-9a-f]{64}" }}
{{- printf "^%s(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(%s)?|%s)$" (regexQuoteMeta .Values.trainer.image.repository) $digest $digest }}
{{- end }}

{{/* FINETUNE_REPORT_URL: the value, else the chart's reports Service. */}}
{{- define "finetune-operator.reportUrl" -}}
{{- if .Values.reports.url }}
{{- .Values.reports.url }}
{{- else }}
{{- printf "https://%s-reports.%s.svc:%d/v1/reports" (include "finetune-operator.fullname" .) .Release.Namespace (int .Values.ports.reports) }}
{{- end }}
{{- end }}

{{/* CEL for the string at `path` under `root` ('' when any segment is unset), e.g.
(dict "root" "variables.spec" "path" "resources.gpuResource"). */}}
{{- define "finetune-operator.celString" -}}
{{- $has := list }}{{- $acc := "" }}
{{- range splitList "." .path }}
{{- $acc = ternary . (printf "%s.%s" $acc .) (eq $acc "") }}
{{- $has = append $has (printf "has(%s.%s)" $.root $acc) }}
{{- end }}
{{- printf "%s ? string(%s.%s) : ''" (join " && " $has) .root .path }}
{{- end }}

{{/* Fields of a FineTuneJob that name an object the trainer pod reads (or writes): the chart's
policy requires the requester's own `verbs` on it. YAML list of
{path, leaf, resource, kind, use, verbs, may}. */}}
{{- define "finetune-operator.policyRefs" -}}
- {path: model.source.hub.tokenSecretRef, leaf: name, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: dataset.source.hub.tokenSecretRef, leaf: name, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: model.source.pvc, leaf: claimName, resource: persistentvolumeclaims, kind: PersistentVolumeClaim, use: mount it, verbs: [get], may: read}
- {path: dataset.source.pvc, leaf: claimName, resource: persistentvolumeclaims, kind: PersistentVolumeClaim, use: mount it, verbs: [get], may: read}
- {path: checkpoint.storage, leaf: claimName, resource: persistentvolumeclaims, kind: PersistentVolumeClaim, use: mount it read-write, verbs: [get, update], may: write}
- {path: dataset.source.configMap, leaf: name, resource: configmaps, kind: ConfigMap, use: read it, verbs: [get], may: read}
- {path: evaluation.dataset.source.hub.tokenSecretRef, leaf: name, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: evaluation.dataset.source.pvc, leaf: claimName, resource: persistentvolumeclaims, kind: PersistentVolumeClaim, use: mount it, verbs: [get], may: read}
- {path: evaluation.dataset.source.configMap, leaf: name, resource: configmaps, kind: ConfigMap, use: read it, verbs: [get], may: read}
- {path: model.source.s3, leaf: credentialsSecret, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: dataset.source.s3, leaf: credentialsSecret, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: evaluation.dataset.source.s3, leaf: credentialsSecret, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
- {path: output.s3, leaf: credentialsSecret, resource: secrets, kind: Secret, use: read it, verbs: [get], may: read}
{{- end }}

{{/* The Secret with the report channel's serving certificate: reports.tls.secretName, else the
one the chart makes (reports-tls.yaml). Every replica serves the same certificate, so a trainer
keeps verifying the operator after another replica took over. */}}
{{- define "finetune-operator.reportsTlsSecret" -}}
{{- .Values.reports.tls.secretName | default (printf "%s-reports-tls" (include "finetune-operator.fullname" .)) }}
{{- end }}
