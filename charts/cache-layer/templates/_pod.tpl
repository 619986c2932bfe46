{{/*
The cache-layer pod template, shared by the Deployment and, when diskCache keeps its files on a
PersistentVolumeClaim, the StatefulSet that replaces it: everything but the disk volume's source
is the same in both.
*/}}
{{- define "cache-layer.podTemplate" -}}
{{- $fullname := include "cache-layer.fullname" . -}}
{{- $redisCA := include "cache-layer.redisCA.enabled" . -}}
metadata:
  annotations:
    # Roll the pods when their settings change.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "cache-layer.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "cache-layer.serviceAccountName" . }}
  automountServiceAccountToken: false
  # No <SERVICE>_PORT, <SERVICE>_SERVICE_HOST... variables: the service reads none of them, and
  # with CONFIG_STRICT a Service named e.g. "redis" or "origin" would look like a misspelt setting.
  enableServiceLinks: false
  securityContext:
    {{- include "cache-layer.podSecurityContext" . | nindent 4 }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Longer than shutdown.delaySeconds + shutdown.drainSeconds (checked at render time).
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: cache-layer
      image: {{ include "cache-layer.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      ports:
        - name: http
          containerPort: {{ .Values.containerPort }}
          protocol: TCP
        {{- if gt (int .Values.adminPort) 0 }}
        - name: admin
          containerPort: {{ .Values.adminPort }}
          protocol: TCP
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ $fullname }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: OTEL_RESOURCE_ATTRIBUTES
          value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)%s" (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
        {{- if .Values.secrets.existingSecret }}
        - name: ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .Values.secrets.existingSecret }}
              key: ADMIN_TOKEN
              optional: true
        - name: ORIGIN_AUTHORIZATION
          valueFrom:
            secretKeyRef:
              name: {{ .Values.secrets.existingSecret }}
              key: ORIGIN_AUTHORIZATION
              optional: true
        {{- else }}
        {{- if .Values.secrets.adminToken }}
        - name: ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ $fullname }}
              key: ADMIN_TOKEN
        {{- end }}
        {{- if .Values.secrets.originAuthorization }}
        - name: ORIGIN_AUTHORIZATION
          valueFrom:
            secretKeyRef:
              name: {{ $fullname }}
              key: ORIGIN_AUTHORIZATION
        {{- end }}
        {{- end }}
        {{- range .Values.secrets.proxyHeaderVars }}
        - name: {{ . }}
          valueFrom:
            secretKeyRef:
              name: {{ required "secrets.proxyHeaderVars needs secrets.existingSecret" $.Values.secrets.existingSecret }}
              key: {{ . }}
        {{- end }}
        {{- if .Values.redis.enabled }}
        {{- if .Values.redis.auth.enabled }}
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "cache-layer.redis.secretName" . }}
              key: {{ include "cache-layer.redis.secretKey" . }}
        {{- end }}
        {{- else if .Values.externalRedis.existingSecret }}
        - name: REDIS_URL
          valueFrom:
            secretKeyRef:
              name: {{ .Values.externalRedis.existingSecret }}
              key: {{ .Values.externalRedis.existingSecretUrlKey }}
        {{- with .Values.externalRedis.existingSecretPasswordKey }}
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $.Values.externalRedis.existingSecret }}
              key: {{ . }}
        {{- end }}
        {{- else }}
        {{- if .Values.externalRedis.url }}
        - name: REDIS_URL
          valueFrom:
            secretKeyRef:
              name: {{ $fullname }}
              key: REDIS_URL
        {{- end }}
        {{- if .Values.externalRedis.password }}
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $fullname }}
              key: REDIS_PASSWORD
        {{- end }}
        {{- end }}
        {{- if $redisCA }}
        - name: REDIS_TLS_CA_FILE
          value: {{ printf "%s/%s" (include "cache-layer.redisCA.dir" .) .Values.externalRedis.tlsCA.key | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: {{ .Values.probes.startup.path }}
          port: {{ ternary "admin" "http" (gt (int .Values.adminPort) 0) }}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: {{ .Values.probes.liveness.path }}
          port: {{ ternary "admin" "http" (gt (int .Values.adminPort) 0) }}
        initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: {{ .Values.probes.readiness.path }}
          port: {{ ternary "admin" "http" (gt (int .Values.adminPort) 0) }}
        initialDelaySeconds: {{ .Values.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        # The root filesystem is read-only; a small scratch /tmp in case a library wants one.
        - name: tmp
          mountPath: /tmp
        {{- if .Values.diskCache.enabled }}
        # diskCache: the disk tier's directory (DISK_CACHE_DIR), an emptyDir or this pod's own
        # PersistentVolumeClaim (StatefulSet volumeClaimTemplates).
        - name: disk-cache
          mountPath: {{ .Values.diskCache.mountPath }}
        {{- end }}
        {{- if $redisCA }}
        # externalRedis.tlsCA: the CA bundle that verifies the rediss:// server.
        - name: redis-ca
          mountPath: {{ include "cache-layer.redisCA.dir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- if and .Values.diskCache.enabled (not (include "cache-layer.diskCache.persistent" .)) }}
    - name: disk-cache
      emptyDir:
        {{- with .Values.diskCache.emptyDir.sizeLimit }}
        sizeLimit: {{ . }}
        {{- else }}
        {}
        {{- end }}
    {{- end }}
    {{- if $redisCA }}
    {{- with .Values.externalRedis.tlsCA }}
    - name: redis-ca
      {{- if .existingSecret }}
      secret:
        secretName: {{ .existingSecret | quote }}
      {{- else }}
      configMap:
        name: {{ .existingConfigMap | quote }}
      {{- end }}
        items:
          - key: {{ .key | quote }}
            path: {{ .key | quote }}
    {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml .Values.topologySpreadConstraints | nindent 4 }}
  {{- else if .Values.topologySpread.enabled }}
  # Soft spread across nodes and zones (topologySpread in values.yaml).
  topologySpreadConstraints:
    {{- range .Values.topologySpread.topologyKeys }}
    - maxSkew: {{ $.Values.topologySpread.maxSkew }}
      topologyKey: {{ . }}
      whenUnsatisfiable: {{ $.Values.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "cache-layer.selectorLabels" $ | nindent 10 }}
    {{- end }}
  {{- end }}
{{- end }}
