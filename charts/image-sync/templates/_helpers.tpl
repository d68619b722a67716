{{/* Names, labels and the pod template shared by the CronJob and the initial-sync Job. */}}

{{- define "image-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; a CronJob's name is limited to 52 characters (its Jobs add 11). */}}
{{- define "image-sync.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "image-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Zot cache's pods (cache.enabled): named zot, as in the kustomize base. */}}
{{- define "image-sync.cacheSelectorLabels" -}}
app.kubernetes.io/name: zot
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end }}

{{- define "image-sync.cacheLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "image-sync.cacheSelectorLabels" . }}
app.kubernetes.io/part-of: image-cache
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Pod labels: the kustomize base's (name, part-of) plus the release. */}}
{{- define "image-sync.podLabels" -}}
{{ include "image-sync.selectorLabels" . }}
app.kubernetes.io/part-of: image-cache
{{- end }}

{{- define "image-sync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "image-sync.podLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "image-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-sync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "image-sync.configMapName" -}}
{{- default (printf "%s-config" (include "image-sync.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{- define "image-sync.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* True when a feature needs the Kubernetes API: the pod then gets its token. */}}
{{- define "image-sync.needsApi" -}}
{{- if or .Values.rbac.leases.enabled .Values.rbac.coverage.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/*
The Job spec the CronJob runs every period; the initial-sync Job is the same plus its
shards. Call with (dict "root" $ "shards" N), N = 0 for the CronJob.
*/}}
{{- define "image-sync.jobSpec" -}}
{{- $root := .root }}
{{- $shards := int .shards }}
{{- with $root -}}
activeDeadlineSeconds: {{ .Values.activeDeadlineSeconds | int64 }}
{{- if $shards }}
# backoffLimit counts the failed pods of all indexes together: the CronJob's retries per pod.
backoffLimit: {{ mul .Values.backoffLimit $shards }}
completionMode: Indexed
completions: {{ $shards }}
parallelism: {{ $shards }}
{{- else }}
backoffLimit: {{ .Values.backoffLimit | int64 }}
{{- end }}
template:
  metadata:
    labels:
      {{- include "image-sync.podLabels" . | nindent 6 }}
    {{- with .Values.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "image-sync.serviceAccountName" . }}
    # The token comes with the API features (rbac.*: the run Lease, coverage).
    automountServiceAccountToken: {{ include "image-sync.needsApi" . }}
    terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds | int64 }}
    securityContext:
      {{- toYaml .Values.podSecurityContext | nindent 6 }}
    {{- with .Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: image-sync
        image: {{ include "image-sync.image" . | quote }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        args:
          - --config
          - /etc/image-sync/config.yaml
          - --log-format
          - {{ .Values.logFormat }}
          {{- if .Values.rbac.leases.enabled }}
          # One run at a time over the cache (the order of k8s/'s arguments).
          - --lease
          - image-sync
          {{- end }}
          {{- range .Values.extraArgs }}
          - {{ . | quote }}
          {{- end }}
          {{- if $shards }}
          - --shard-count
          - {{ $shards | quote }}
          {{- end }}
        env:
          {{- if .Values.rbac.leases.enabled }}
          # The run holding the Lease is the Job: every shard shares its Job's uid.
          - name: IMAGE_SYNC_LEASE_HOLDER
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/controller-uid']
          {{- end }}
          {{- if .Values.dockerHub.existingSecret }}
          # crane reads $DOCKER_CONFIG/config.json; skopeo gets the file passed explicitly.
          - name: DOCKER_CONFIG
            value: /etc/docker-auth
          {{- end }}
          # The root filesystem is read-only; /tmp is the only writable place.
          - name: HOME
            value: /tmp
          # Optional: without the ConfigMap (monitoring.pushgateway.url) nothing is pushed.
          - name: IMAGE_SYNC_PUSHGATEWAY
            valueFrom:
              configMapKeyRef:
                name: {{ include "image-sync.fullname" . }}-monitoring
                key: pushgateway
                optional: true
          {{- with .Values.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        resources:
          {{- toYaml .Values.resources | nindent 10 }}
        securityContext:
          {{- toYaml .Values.securityContext | nindent 10 }}
        volumeMounts:
          - name: config
            mountPath: /etc/image-sync
            readOnly: true
          {{- if .Values.dockerHub.existingSecret }}
          - name: docker-auth
            mountPath: /etc/docker-auth
            readOnly: true
          {{- end }}
          - name: tmp
            mountPath: /tmp
    volumes:
      - name: config
        configMap:
          name: {{ include "image-sync.configMapName" . }}
          defaultMode: 292 # 0444
      {{- if .Values.dockerHub.existingSecret }}
      # optional: until the Secret exists, pods start and pull anonymously.
      - name: docker-auth
        secret:
          secretName: {{ .Values.dockerHub.existingSecret }}
          optional: true
          defaultMode: 288 # 0440
          items:
            - key: .dockerconfigjson
              path: config.json
      {{- end }}
      - name: tmp
        emptyDir:
          sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}
{{- end }}

{{/* The initial-sync Job's spec and name: the name carries a hash of the spec. */}}
{{- define "image-sync.initialJobSpec" -}}
{{- include "image-sync.jobSpec" (dict "root" . "shards" .Values.initialSync.shards) }}
{{- end }}

{{- define "image-sync.initialJobName" -}}
{{- printf "%s-initial-%s" (include "image-sync.fullname" .) (include "image-sync.initialJobSpec" . | sha256sum | trunc 8) }}
{{- end }}
