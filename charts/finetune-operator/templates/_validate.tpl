{{/*
Cross-field checks the JSON schema cannot express; each failure says what, why and what to do.
The operator repeats them at start (settings.py), but failing at `helm install` is earlier.
*/}}
{{- define "finetune-operator.validate" -}}
{{- $allowed := splitList "," (include "finetune-operator.allowedClasses" .) }}
{{- if not (has .Values.defaultPriorityClass $allowed) }}
{{- fail (printf "defaultPriorityClass %q is not in the allowed classes (%s): jobs without a class would be rejected; set defaultPriorityClass to one of them or add it to allowedPriorityClasses" .Values.defaultPriorityClass (join ", " $allowed)) }}
{{- end }}
{{- $bands := splitList "," (include "finetune-operator.bandNames" .) }}
{{- if .Values.priorityClasses.create }}
{{- range .Values.priorityClasses.preempting }}
{{- if not (has . $bands) }}
{{- fail (printf "priorityClasses.preempting names %q, which is not in priorityClasses.bands (%s): add the band or remove it from preempting" . (join ", " $bands)) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $ns, $classes := .Values.namespacePriorityClasses }}
{{- if not $classes }}
{{- fail (printf "namespacePriorityClasses.%s is empty, which would reject every job in %s; remove the entry to use the global list" $ns $ns) }}
{{- end }}
{{- end }}
{{- $ports := list (int .Values.ports.metrics) (int .Values.ports.health) (int .Values.ports.reports) }}
{{- if ne (len ($ports | uniq)) 3 }}
{{- fail (printf "ports.metrics (%v), ports.health (%v) and ports.reports (%v) must differ; give each its own port" .Values.ports.metrics .Values.ports.health .Values.ports.reports) }}
{{- end }}
{{- end }}
