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
{{- $trainerHost := regexFind "^[^/]+/" .Values.trainer.image.repository | trimSuffix "/" }}
{{- if not (or (contains "." $trainerHost) (contains ":" $trainerHost) (eq $trainerHost "localhost")) }}
{{- fail (printf "trainer.image.repository %q does not start with a registry host: a short name is resolved by each node's runtime (Docker Hub by default, where anyone may publish a namesake), and the policy allows this repository in every job's spec.image; name it fully, e.g. registry.example/ml/trainer or docker.io/org/trainer" .Values.trainer.image.repository) }}
{{- end }}
{{- $ports := list (int .Values.ports.metrics) (int .Values.ports.health) (int .Values.ports.reports) }}
{{- if ne (len ($ports | uniq)) 3 }}
{{- fail (printf "ports.metrics (%v), ports.health (%v) and ports.reports (%v) must differ; give each its own port" .Values.ports.metrics .Values.ports.health .Values.ports.reports) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) (ge (int $pdb.minAvailable) (int .Values.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below replicaCount (%v): otherwise no operator pod may ever be evicted and every node drain waits for a person; lower minAvailable or raise replicaCount" $pdb.minAvailable .Values.replicaCount) }}
{{- end }}
{{- end }}
