{{/*
The alert rules as a Prometheus rules file body (`groups:`). Used by the PrometheusRule and
rendered with the default values into rules/finetune-alerts.yaml for promtool and for plain
Prometheus (scripts/render-alert-rules.sh; tests/unit/test_alerts.py checks they agree).
Series are aggregated `by (namespace, job)` first, so duplicates from a restarted operator pod
(different instance/pod labels) never break one-to-one matching.
*/}}
{{- define "finetune-operator.alertGroups" -}}
{{- $a := .Values.monitoring.alerts }}
{{- $q := $a.stuckInQueue }}
{{- $c := $a.checkpointTooOld }}
{{- $f := $a.failureRate }}
groups:
  - name: finetune-operator
    rules:
      - alert: FineTuneJobStuckInQueue
        expr: |-
          time() - max by (namespace, job) (finetune_job_queued_since_timestamp_seconds)
            > {{ $q.seconds | int64 }}
        for: {{ $q.for }}
        labels:
          severity: {{ $q.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} has been queued for {{ $value | humanizeDuration }}` | quote }}
          description: {{ `The job has waited longer than the threshold. See why: kubectl -n {{ $labels.namespace }} get ftj {{ $labels.job }} -o jsonpath='{.status.queue.reason}'; then free quota, raise the namespace's ResourceQuota, or lower the job's resources.` | quote }}
      - alert: FineTuneCheckpointTooOld
        expr: |-
          (
            time() - max by (namespace, job) (finetune_job_last_checkpoint_timestamp_seconds)
          )
          > on (namespace, job)
          (
            clamp(
              {{ $c.factor }} * max by (namespace, job) (finetune_job_checkpoint_interval_steps)
                / on (namespace, job)
              max by (namespace, job) (deriv(finetune_job_step[{{ $c.rateWindow }}])),
              {{ $c.minSeconds | int64 }}, {{ $c.maxSeconds | int64 }}
            )
            or on (namespace, job)
            (0 * max by (namespace, job) (finetune_job_last_checkpoint_timestamp_seconds) + {{ $c.maxSeconds | int64 }})
          )
          and on (namespace, job)
          max by (namespace, job) (finetune_job_info{phase="Running"})
        for: {{ $c.for }}
        labels:
          severity: {{ $c.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `FineTuneJob {{ $labels.namespace }}/{{ $labels.job }}: newest checkpoint is {{ $value | humanizeDuration }} old` | quote }}
          description: {{ printf "A running job has not saved a checkpoint for more than %v x its expected checkpoint interval (intervalSteps / step rate, clamped to %vs..%vs). A preemption now would lose that work. Check the trainer's logs and the checkpoint volume." $c.factor ($c.minSeconds | int64) ($c.maxSeconds | int64) | quote }}
      - alert: FineTuneFailureRateHigh
        expr: |-
          (
            sum by (namespace) (increase(finetune_failures_total[{{ $f.window }}]))
            /
            (
              sum by (namespace) (increase(finetune_failures_total[{{ $f.window }}]))
              + on (namespace)
              (
                sum by (namespace) (increase(finetune_completions_total[{{ $f.window }}]))
                or on (namespace)
                0 * sum by (namespace) (increase(finetune_failures_total[{{ $f.window }}]))
              )
            )
          ) > {{ $f.threshold }}
          and on (namespace)
          sum by (namespace) (increase(finetune_failures_total[{{ $f.window }}])) >= {{ $f.minFailures | int64 }}
        for: {{ $f.for }}
        labels:
          severity: {{ $f.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `FineTuneJobs in {{ $labels.namespace }}: {{ $value | humanizePercentage }} of finished attempts failed` | quote }}
          description: {{ printf "More than %v%% of the attempts that ended in the last %s failed (at least %v failures). See the reasons with sum by (reason) (increase(finetune_failures_total{namespace=\"{{ $labels.namespace }}\"}[%s])) and kubectl -n {{ $labels.namespace }} get ftj." (mulf $f.threshold 100) $f.window ($f.minFailures | int64) $f.window | quote }}
{{- end }}
