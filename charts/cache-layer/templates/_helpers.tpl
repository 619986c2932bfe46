{{/*
Chart name, cut to 63 characters (the DNS label limit).
*/}}
{{- define "cache-layer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters. When the release name already contains the
chart name it is used alone.
*/}}
{{- define "cache-layer.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "cache-layer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "cache-layer.labels" -}}
helm.sh/chart: {{ include "cache-layer.chart" . }}
{{ include "cache-layer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cache-layer
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "cache-layer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cache-layer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "cache-layer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cache-layer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference.
*/}}
{{- define "cache-layer.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the redis subchart's resources (Service, Secret): the subchart's own fullname rule
(charts/redis/templates/_helpers.tpl), computed from the parent's view of its values.
*/}}
{{- define "cache-layer.redis.fullname" -}}
{{- if .Values.redis.fullnameOverride }}
{{- .Values.redis.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "redis" .Values.redis.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Secret and key holding the bundled Redis's password.
*/}}
{{- define "cache-layer.redis.secretName" -}}
{{- .Values.redis.auth.existingSecret | default (include "cache-layer.redis.fullname" .) }}
{{- end }}
{{- define "cache-layer.redis.secretKey" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecretPasswordKey | default "redis-password" }}
{{- else }}
{{- "redis-password" }}
{{- end }}
{{- end }}

{{/*
The chart-managed Secret's keys, as a dict (empty when nothing is to be created): ADMIN_TOKEN
and ORIGIN_AUTHORIZATION unless secrets.existingSecret names a Secret of yours; REDIS_URL and
REDIS_PASSWORD of an external Redis unless externalRedis.existingSecret does.
*/}}
{{- define "cache-layer.secretData" -}}
{{- $data := dict }}
{{- if not .Values.secrets.existingSecret }}
{{- with .Values.secrets.adminToken }}{{ $_ := set $data "ADMIN_TOKEN" . }}{{ end }}
{{- with .Values.secrets.originAuthorization }}{{ $_ := set $data "ORIGIN_AUTHORIZATION" . }}{{ end }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.existingSecret) }}
{{- with .Values.externalRedis.url }}{{ $_ := set $data "REDIS_URL" . }}{{ end }}
{{- with .Values.externalRedis.password }}{{ $_ := set $data "REDIS_PASSWORD" . }}{{ end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
CA bundle of an external rediss:// Redis (externalRedis.tlsCA): "true" when one is to be mounted
(empty otherwise), and the directory it is mounted at (REDIS_TLS_CA_FILE is <dir>/<key>).
*/}}
{{- define "cache-layer.redisCA.enabled" -}}
{{- $ca := .Values.externalRedis.tlsCA | default dict }}
{{- if and (not .Values.redis.enabled) (or $ca.existingSecret $ca.existingConfigMap) }}true{{ end }}
{{- end }}
{{- define "cache-layer.redisCA.dir" -}}
/etc/cache-layer/redis-ca
{{- end }}

{{/*
Settings checks that the schema cannot express; rendering fails with a message.
*/}}
{{- define "cache-layer.validate" -}}
{{- $delay := int .Values.shutdown.delaySeconds }}
{{- $drain := int .Values.shutdown.drainSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $delay $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed shutdown.delaySeconds + shutdown.drainSeconds (%d + %d), or Kubernetes kills pods mid-drain" (int .Values.terminationGracePeriodSeconds) $delay $drain) }}
{{- end }}
{{- $ca := .Values.externalRedis.tlsCA | default dict }}
{{- if and .Values.redis.enabled (or .Values.externalRedis.url .Values.externalRedis.existingSecret $ca.existingSecret $ca.existingConfigMap) }}
{{- fail "externalRedis is set while redis.enabled=true: set redis.enabled=false to use an external Redis" }}
{{- end }}
{{- if and $ca.existingSecret $ca.existingConfigMap }}
{{- fail (printf "externalRedis.tlsCA: set existingSecret (%q) or existingConfigMap (%q), not both: the CA bundle comes from one of them" $ca.existingSecret $ca.existingConfigMap) }}
{{- end }}
{{- if include "cache-layer.redisCA.enabled" . }}
{{- if not (or .Values.externalRedis.url .Values.externalRedis.existingSecret) }}
{{- fail "externalRedis.tlsCA is set but no external Redis is: set externalRedis.url (rediss://...) or externalRedis.existingSecret" }}
{{- end }}
{{- if and .Values.externalRedis.url (not .Values.externalRedis.existingSecret) }}
{{- range splitList "," .Values.externalRedis.url }}
{{- if not (hasPrefix "rediss://" (trim .)) }}
{{- fail (printf "externalRedis.tlsCA is set, so every externalRedis.url must be rediss:// (TLS); got %q (the service refuses REDIS_TLS_CA_FILE otherwise)" (regexReplaceAll "//[^@/]*@" (trim .) "//***@")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- include "cache-layer.validateDiskCache" . }}
{{- include "cache-layer.validateConfig" . }}
{{- end }}

{{/*
config checks across keys, as the service makes them at start-up (src/config.rs), so a values
mistake fails helm install / helm template instead of putting the pods in a crash loop. The
schema checks each key alone (and rejects unknown keys); it cannot compare two numbers.
*/}}
{{- define "cache-layer.validateConfig" -}}
{{- $c := .Values.config }}
{{- $url := toString ($c.ORIGIN_URL | default "") }}
{{- if and (not $url) (not .Values.origin.simulated) }}
{{- fail "config.ORIGIN_URL is empty: set it to your origin's URL template (e.g. https://api.example.com/items/{key}), or set origin.simulated=true to answer every key with a made-up value (demo and tests only)" }}
{{- end }}
{{- if and $url .Values.origin.simulated }}
{{- fail (printf "origin.simulated=true and config.ORIGIN_URL=%q are both set: pick one (the service would use ORIGIN_URL)" $url) }}
{{- end }}
{{- $redis := or .Values.redis.enabled .Values.externalRedis.url .Values.externalRedis.existingSecret }}
{{- $timeout := toString ($c.ORIGIN_TIMEOUT_MS | default "2000") | int64 }}
{{- $lockTTL := toString ($c.FLEET_LOCK_TTL_MS | default "5000") | int64 }}
{{- if and $redis (lt $lockTTL $timeout) }}
{{- fail (printf "config.FLEET_LOCK_TTL_MS (%d) must be at least config.ORIGIN_TIMEOUT_MS (%d) when Redis is configured, so the fleet lock outlives the fetch it guards (the service refuses to start otherwise)" $lockTTL $timeout) }}
{{- end }}
{{- $ttlMax := toString ($c.CACHE_TTL_MAX_SECS | default "none") }}
{{- if ne $ttlMax "none" }}
{{- $ttlMin := toString ($c.CACHE_TTL_MIN_SECS | default "0") | int64 }}
{{- if gt $ttlMin ($ttlMax | int64) }}
{{- fail (printf "config.CACHE_TTL_MIN_SECS (%d) must be at most config.CACHE_TTL_MAX_SECS (%s) (the service refuses to start otherwise)" $ttlMin $ttlMax) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
diskCache checks: the mount must not hide the chart's own mounts, and the volume must hold
maxBytes (an emptyDir past its sizeLimit gets the pod evicted; a full claim turns the tier off).
*/}}
{{- define "cache-layer.validateDiskCache" -}}
{{- with .Values.diskCache }}
{{- if .enabled }}
{{- $mount := clean .mountPath }}
{{- if eq $mount "/" }}
{{- fail "diskCache.mountPath must be a directory of its own, e.g. /var/cache/cache-layer, not /" }}
{{- end }}
{{- range list "/tmp" (include "cache-layer.redisCA.dir" $) "/usr/local/bin" }}
{{- if or (eq $mount .) (hasPrefix (printf "%s/" .) $mount) (hasPrefix (printf "%s/" $mount) .) }}
{{- fail (printf "diskCache.mountPath %q overlaps %s, which the chart or the image uses: pick a directory of its own, e.g. /var/cache/cache-layer" $.Values.diskCache.mountPath .) }}
{{- end }}
{{- end }}
{{- $max := .maxBytes | int64 }}
{{- if eq .volume "persistentVolumeClaim" }}
{{- if lt (include "cache-layer.bytes" .persistentVolumeClaim.size | int64) $max }}
{{- fail (printf "diskCache.persistentVolumeClaim.size (%s) is smaller than diskCache.maxBytes (%d): the claim must hold what the tier may write" .persistentVolumeClaim.size $max) }}
{{- end }}
{{- else if .emptyDir.sizeLimit }}
{{- if lt (include "cache-layer.bytes" .emptyDir.sizeLimit | int64) $max }}
{{- fail (printf "diskCache.emptyDir.sizeLimit (%s) is smaller than diskCache.maxBytes (%d): the kubelet evicts a pod whose emptyDir grows past its limit" .emptyDir.sizeLimit $max) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
diskCache: "true" when the disk tier keeps its files on a PersistentVolumeClaim per pod (empty
otherwise). The chart then renders a StatefulSet with volumeClaimTemplates instead of the
Deployment: replicas cannot share a ReadWriteOnce volume, so each pod gets a claim of its own,
and finds it again (with its entries) when it is rescheduled or rolled.
*/}}
{{- define "cache-layer.diskCache.persistent" -}}
{{- if and .Values.diskCache.enabled (eq .Values.diskCache.volume "persistentVolumeClaim") }}true{{ end }}
{{- end }}

{{/*
Kind of the workload running the pods (Deployment or StatefulSet), for the HPA's target.
*/}}
{{- define "cache-layer.workloadKind" -}}
{{- if include "cache-layer.diskCache.persistent" . }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
Name of the headless Service that governs the StatefulSet (its serviceName).
*/}}
{{- define "cache-layer.headlessServiceName" -}}
{{- printf "%s-headless" (include "cache-layer.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
The pod's securityContext: podSecurityContext, plus, with the disk tier on, an fsGroup (the
container's group, 65532 by default) when none is set, so the non-root user can write the
volume, and fsGroupChangePolicy OnRootMismatch, so a volume holding many files is not walked
again at every mount.
*/}}
{{- define "cache-layer.podSecurityContext" -}}
{{- $psc := deepCopy (.Values.podSecurityContext | default dict) }}
{{- if .Values.diskCache.enabled }}
{{- if not (hasKey $psc "fsGroup") }}
{{- $_ := set $psc "fsGroup" (.Values.securityContext.runAsGroup | default 65532) }}
{{- end }}
{{- if not (hasKey $psc "fsGroupChangePolicy") }}
{{- $_ := set $psc "fsGroupChangePolicy" "OnRootMismatch" }}
{{- end }}
{{- end }}
{{- toYaml $psc }}
{{- end }}

{{/*
A Kubernetes quantity ("512Mi", "2Gi", "1.5G", "1073741824") in bytes, for the render-time
checks below; fails on a form it does not know.
*/}}
{{- define "cache-layer.bytes" -}}
{{- $q := toString . | trim }}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $suffix := trimPrefix $number $q }}
{{- if or (not $number) (not (hasKey $units $suffix)) }}
{{- fail (printf "%q is not a quantity of bytes this chart understands (e.g. 1073741824, 512Mi, 2Gi)" $q) }}
{{- end }}
{{- mulf (float64 $number) (index $units $suffix) | int64 }}
{{- end }}

{{/*
Memory a pod needs, in bytes: 1.2 × (MEMORY_CACHE_MAX_BYTES, when the memory tier is on, +
DISK_CACHE_INDEX_MAX_BYTES, when the disk tier is) + 32 MiB (the README's sizing rule).
*/}}
{{- define "cache-layer.memoryNeeded" -}}
{{- $bound := 0 }}
{{- if not (has (lower (toString (.Values.config.MEMORY_CACHE_ENABLED | default "true"))) (list "false" "0" "no")) }}
{{- $bound = .Values.config.MEMORY_CACHE_MAX_BYTES | default "67108864" | int64 }}
{{- end }}
{{- if .Values.diskCache.enabled }}
{{- $bound = add $bound (.Values.diskCache.indexMaxBytes | int64) }}
{{- end }}
{{- addf (mulf 1.2 $bound) 33554432 | ceil | int64 }}
{{- end }}
