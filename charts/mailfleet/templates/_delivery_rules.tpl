{{/*
Delivery KPI alerts: what mailbox providers judge a sender on (delivery, bounce and complaint
rates, deferral spikes, send-rate anomalies, queue age, warmups, usable IPs). Engine series come
from the PodMonitor (labels namespace and mailfleet_io_pool), operator series from the
ServiceMonitor. Included by prometheusrule.yaml as its own group; thresholds are
.Values.prometheus.rules.delivery.
*/}}
{{- define "mailfleet.deliveryRules" -}}
{{- $r := .Values.prometheus.rules }}
{{- $d := $r.delivery }}
{{- $job := include "mailfleet.metricsServiceName" . }}
{{- $sel := printf "job=%q, namespace=%q" $job .Release.Namespace }}
{{- $runbook := $r.runbookBaseURL }}
{{- $A := "mailfleet_delivery_attempts_total" }}
{{- $pool := "namespace, mailfleet_io_pool" }}
{{- $where := "{{ $labels.namespace }}/{{ $labels.mailfleet_io_pool }}" }}
- name: mailfleet-delivery
  rules:
    - alert: MailfleetDeliveryRateLow
      # Share of delivery attempts that delivered: below a floor, or well below the pool's own
      # rate over the previous day (a block or a bad list shows here first).
      expr: |-
        (
            sum by ({{ $pool }}) (rate({{ $A }}{result="delivered"}[{{ $d.successRateWindow }}]))
              / sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.successRateWindow }}]))
            < {{ $d.successRateMin }}
          or
            sum by ({{ $pool }}) (rate({{ $A }}{result="delivered"}[{{ $d.successRateWindow }}]))
              / sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.successRateWindow }}]))
            < sum by ({{ $pool }}) (rate({{ $A }}{result="delivered"}[1d] offset {{ $d.successRateWindow }}))
              / sum by ({{ $pool }}) (rate({{ $A }}[1d] offset {{ $d.successRateWindow }}))
              - {{ $d.successRateDrop }}
        )
        and sum by ({{ $pool }}) (increase({{ $A }}[{{ $d.successRateWindow }}])) >= {{ $d.minAttempts }}
      for: {{ $d.successRateFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ $where }} delivers {{ "{{ $value | humanizePercentage }}" }} of its attempts'
        description: >-
          Only {{ "{{ $value | humanizePercentage }}" }} of the delivery attempts of SendingPool
          {{ $where }} delivered over the last {{ $d.successRateWindow }} (floor
          {{ $d.successRateMin }}, or {{ $d.successRateDrop }} below the previous day's rate).
          Look at mailfleet_delivery_attempts_total by provider and reply_class.
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetdeliveryratelow
        {{- end }}
    - alert: MailfleetHardBounceRateHigh
      # Permanent failures among final outcomes, per provider: list hygiene, or a provider
      # refusing the pool outright.
      expr: |-
        sum by ({{ $pool }}, provider) (rate({{ $A }}{result="bounced"}[{{ $d.hardBounceWindow }}]))
          / sum by ({{ $pool }}, provider) (rate({{ $A }}{result=~"delivered|bounced"}[{{ $d.hardBounceWindow }}]))
          > {{ $d.hardBounceRate }}
        and sum by ({{ $pool }}, provider) (increase({{ $A }}{result=~"delivered|bounced"}[{{ $d.hardBounceWindow }}])) >= {{ $d.minAttempts }}
      for: {{ $d.hardBounceFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ $where }} hard-bounces {{ "{{ $value | humanizePercentage }}" }} at {{ "{{ $labels.provider }}" }}'
        description: >-
          {{ "{{ $value | humanizePercentage }}" }} of the recipients SendingPool {{ $where }} finished
          with at {{ "{{ $labels.provider }}" }} over the last {{ $d.hardBounceWindow }} bounced
          (threshold {{ $d.hardBounceRate }}). Check reply_class: invalid-recipient means a stale
          list; reputation or auth-policy means the provider refuses the pool.
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleethardbounceratehigh
        {{- end }}
{{- range $level := list "warning" "critical" }}
{{- $above := ternary $d.complaintRateWarning $d.complaintRateCritical (eq $level "warning") }}
    - alert: MailfleetComplaintRate{{ ternary "High" "Critical" (eq $level "warning") }}
      # Complaints (ARF reports) per delivered message, per source IP and provider, over the
      # window providers judge on (Gmail and Yahoo: 0.1 % to watch, 0.3 % never to reach).
      expr: |-
        (
          sum by ({{ $pool }}, source_ip, provider) (increase(mailfleet_complaints_total[{{ $d.complaintWindow }}]))
            / sum by ({{ $pool }}, source_ip, provider) (increase({{ $A }}{result="delivered"}[{{ $d.complaintWindow }}]))
            > {{ $above }}
          {{- if eq $level "warning" }}
            <= {{ $d.complaintRateCritical }}
          {{- end }}
        )
        and sum by ({{ $pool }}, source_ip, provider) (increase({{ $A }}{result="delivered"}[{{ $d.complaintWindow }}])) >= {{ $d.complaintMinDelivered }}
      for: {{ $d.complaintFor }}
      labels:
        severity: {{ $level }}
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'Complaint rate {{ "{{ $value | humanizePercentage }}" }} from {{ "{{ $labels.source_ip }}" }} at {{ "{{ $labels.provider }}" }}'
        description: >-
          {{ "{{ $value | humanizePercentage }}" }} of the messages SendingPool {{ $where }} delivered
          from {{ "{{ $labels.source_ip }}" }} to {{ "{{ $labels.provider }}" }} over the last
          {{ $d.complaintWindow }} were reported as spam (above {{ $above }}). Providers throttle
          and then block senders above 0.3 %.
        {{- with $runbook }}
        runbook_url: {{ $runbook }}#mailfleetcomplaintrate{{ ternary "high" "critical" (eq $level "warning") }}
        {{- end }}
{{- end }}
    - alert: MailfleetDeferralSpike
      # Deferral share per provider against the pool's own previous day: a provider starting to
      # throttle or to distrust the pool, before it blocks.
      expr: |-
        sum by ({{ $pool }}, provider) (rate({{ $A }}{result="deferred"}[{{ $d.deferralWindow }}]))
          / sum by ({{ $pool }}, provider) (rate({{ $A }}[{{ $d.deferralWindow }}]))
          > {{ $d.deferralSpikeFactor }} * (
              (
                sum by ({{ $pool }}, provider) (rate({{ $A }}{result="deferred"}[1d] offset {{ $d.deferralWindow }}))
                or 0 * sum by ({{ $pool }}, provider) (rate({{ $A }}[1d] offset {{ $d.deferralWindow }}))
              )
              / sum by ({{ $pool }}, provider) (rate({{ $A }}[1d] offset {{ $d.deferralWindow }}))
            )
          > {{ $d.deferralRateFloor }}
        and sum by ({{ $pool }}, provider) (increase({{ $A }}[{{ $d.deferralWindow }}])) >= {{ $d.minAttempts }}
      for: {{ $d.deferralFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'Deferrals at {{ "{{ $labels.provider }}" }} spike for SendingPool {{ $where }}'
        description: >-
          {{ "{{ $value | humanizePercentage }}" }} of SendingPool {{ $where }}'s attempts at
          {{ "{{ $labels.provider }}" }} were deferred over the last {{ $d.deferralWindow }}, more than
          {{ $d.deferralSpikeFactor }} times its share over the previous day. See the reply classes
          (throttled, reputation) and mailfleet_shaping_rate for that provider.
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetdeferralspike
        {{- end }}
{{- range $kind := list "Drop" "Surge" }}
    - alert: MailfleetSendRate{{ $kind }}
      # Attempts per second against the same hour {{ $d.sendRateBaselineOffset }} before: a sender
      # that stopped, or one sending far more than it does (a leaked credential, a runaway job).
      expr: |-
        (
          sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.sendRateWindow }}]))
          or 0 * sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.sendRateWindow }}] offset {{ $d.sendRateBaselineOffset }}))
        )
        {{ ternary "<" ">" (eq $kind "Drop") }} {{ ternary $d.sendRateDrop $d.sendRateSurge (eq $kind "Drop") }}
          * sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.sendRateWindow }}] offset {{ $d.sendRateBaselineOffset }}))
        and sum by ({{ $pool }}) (rate({{ $A }}[{{ $d.sendRateWindow }}] offset {{ $d.sendRateBaselineOffset }})) >= {{ $d.sendRateMinBaseline }}
      for: {{ $d.sendRateFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ $where }} sends {{ ternary "far less" "far more" (eq $kind "Drop") }} than at this hour {{ $d.sendRateBaselineOffset }} ago'
        description: >-
          SendingPool {{ $where }} makes {{ "{{ $value | humanize }}" }} delivery attempts a second
          over the last {{ $d.sendRateWindow }}, {{ ternary "under" "over" (eq $kind "Drop") }}
          {{ ternary $d.sendRateDrop $d.sendRateSurge (eq $kind "Drop") }} times the same hour
          {{ $d.sendRateBaselineOffset }} before.
          {{- if eq $kind "Drop" }} Check the submitting applications and the pool's pods.
          {{- else }} Check who submits (a leaked credential, a runaway job) before providers notice.
          {{- end }}
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetsendrate{{ lower $kind }}
        {{- end }}
{{- end }}
    - alert: MailfleetQueueMessageOld
      # The oldest message waiting in any pod of the pool: mail stuck behind deferrals.
      expr: max by ({{ $pool }}) (mailfleet_queue_oldest_age_seconds) > {{ int64 $d.queueOldestAgeSeconds }}
      for: {{ $d.queueAgeFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ $where }} holds a message queued for {{ "{{ $value | humanizeDuration }}" }}'
        description: >-
          The oldest message in SendingPool {{ $where }}'s spools has waited
          {{ "{{ $value | humanizeDuration }}" }} (threshold {{ int64 $d.queueOldestAgeSeconds }} s).
          Mail that old is usually deferred by a provider; it bounces at the policy's maxAge.
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetqueuemessageold
        {{- end }}
    - alert: MailfleetWarmupHeld
      # A warmup whose health gates hold it on the same day: the IP does not get warmer.
      expr: max by (warmup_namespace, warmup, pool) (mailfleet_warmup_phase{ {{- $sel -}}, phase="Holding"}) == 1
      for: {{ $d.warmupHeldFor }}
      labels:
        severity: warning
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'IPWarmup {{ "{{ $labels.warmup_namespace }}/{{ $labels.warmup }}" }} has been held for {{ $d.warmupHeldFor }}'
        description: >-
          IPWarmup {{ "{{ $labels.warmup_namespace }}/{{ $labels.warmup }}" }} (pool
          {{ "{{ $labels.pool }}" }}) has been Holding for {{ $d.warmupHeldFor }}: its gates
          (bounce, complaint or deferral rate) keep it on the same day.
          kubectl -n {{ "{{ $labels.warmup_namespace }}" }} describe ipwarmup {{ "{{ $labels.warmup }}" }}
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetwarmupheld
        {{- end }}
    - alert: MailfleetNoHealthyIP
      # Every address of the pool standby or quarantined: nothing can send.
      expr: |-
        (
          max by (pool_namespace, pool) (mailfleet_pool_ip_state{ {{- $sel -}} } == 1)
          unless on (pool_namespace, pool)
            max by (pool_namespace, pool) (mailfleet_pool_ip_state{ {{- $sel -}}, state=~"active|warming"} == 1)
        )
        or max by (pool_namespace, pool) (mailfleet_pool_condition{ {{- $sel -}}, reason="NoHealthyIP"} == 1)
      for: {{ $d.noHealthyIPFor }}
      labels:
        severity: critical
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ "{{ $labels.pool_namespace }}/{{ $labels.pool }}" }} has no IP to send from'
        description: >-
          No address of SendingPool {{ "{{ $labels.pool_namespace }}/{{ $labels.pool }}" }} is
          active or warming (all quarantined or standby): mail queues. Return a delisted IP or
          promote a standby one (spec.ips[].standby: false).
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetnohealthyip
        {{- end }}
    - alert: MailfleetNoHealthyIPForProvider
      # Every source IP of the pool quarantined or suspended by the engines for one provider.
      expr: |-
        min by ({{ $pool }}, provider) (
          max by ({{ $pool }}, source_ip, provider) ({__name__=~"mailfleet_shaping_(quarantined|suspended)"})
        ) == 1
      for: {{ $d.noHealthyIPFor }}
      labels:
        severity: critical
        {{- with $r.alertLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'SendingPool {{ $where }} cannot send to {{ "{{ $labels.provider }}" }} from any IP'
        description: >-
          Every source IP of SendingPool {{ $where }} is quarantined or suspended for
          {{ "{{ $labels.provider }}" }}: its mail waits in the queue. See the reply rules that
          fired (mailfleet_reply_rule_hits_total) and the provider's postmaster tools.
        {{- with $runbook }}
        runbook_url: {{ . }}#mailfleetnohealthyipforprovider
        {{- end }}
{{- end }}
