{{/* The chart's name, or nameOverride. */}}
{{- define "regcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already contains the chart's. */}}
{{- define "regcache.fullname" -}}
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

{{- define "regcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Pod selector of one component (cache, node-config, node-config-restore): components never
select each other's pods, so the Service and the PDB see the cache's pods only. */}}
{{- define "regcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "regcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "regcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "regcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "regcache.registryCredsSecret" -}}
{{- default (printf "%s-creds" (include "regcache.fullname" .)) .Values.registryCredentials.existingSecret }}
{{- end }}

{{- define "regcache.s3Secret" -}}
{{- default (printf "%s-s3" (include "regcache.fullname" .)) .Values.s3.credentials.existingSecret }}
{{- end }}

{{- define "regcache.hasRegistryCreds" -}}
{{- if or .Values.registryCredentials.existingSecret .Values.registryCredentials.entries }}true{{ end }}
{{- end }}

{{- define "regcache.hasS3Keys" -}}
{{- if or .Values.s3.credentials.existingSecret .Values.s3.credentials.accessKeyId }}true{{ end }}
{{- end }}

{{- define "regcache.hasUpstreamCA" -}}
{{- if or .Values.upstreamCA.existingConfigMap .Values.upstreamCA.pem }}true{{ end }}
{{- end }}

{{- define "regcache.upstreamCAConfigMap" -}}
{{- default (printf "%s-upstream-ca" (include "regcache.fullname" .)) .Values.upstreamCA.existingConfigMap }}
{{- end }}

{{/* The container's port: config.port, 3000 by default (the Service maps service.port to it). */}}
{{- define "regcache.port" -}}
{{- default 3000 .Values.config.port | int }}
{{- end }}

{{/* Where the chart mounts what it gives regcache. */}}
{{- define "regcache.cacheDir" -}}/var/cache/regcache{{- end }}
{{- define "regcache.configDir" -}}/etc/regcache{{- end }}
{{- define "regcache.credsDir" -}}/etc/regcache-creds{{- end }}
{{- define "regcache.caDir" -}}/etc/regcache-ca{{- end }}

{{/* The config file: values.config plus what the chart decides itself. Empty lists and nulls are
left out (an absent repeatable option is its default); every other value is written as given. */}}
{{- define "regcache.configFile" -}}
{{- $owned := dict "cache-dir" "fixed: the cache volume's mount" "bucket" "s3.bucket" "s3-prefix" "s3.prefix" "s3-redirect" "s3.redirect" "local-cache-size" "cache.localCacheSize" "creds-file" "registryCredentials" "upstream-ca" "upstreamCA" "config" "-c is set by the chart" }}
{{- $config := dict }}
{{- range $key, $value := .Values.config }}
{{- if hasKey $owned $key }}
{{- fail (printf "config.%s: set by the chart (%s)" $key (get $owned $key)) }}
{{- end }}
{{- if and (not (kindIs "invalid" $value)) (not (and (kindIs "slice" $value) (empty $value))) }}
{{- $_ := set $config $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $config "host" (default "0.0.0.0" $config.host) }}
{{- $_ := set $config "port" (include "regcache.port" . | int) }}
{{- $_ := set $config "cache-dir" (include "regcache.cacheDir" .) }}
{{- with .Values.s3.bucket }}
{{- $_ := set $config "bucket" . }}
{{- end }}
{{- if .Values.s3.prefix }}
{{- if not .Values.s3.bucket }}{{ fail "s3.prefix needs s3.bucket" }}{{ end }}
{{- $_ := set $config "s3-prefix" .Values.s3.prefix }}
{{- end }}
{{- if .Values.s3.redirect }}
{{- if not .Values.s3.bucket }}{{ fail "s3.redirect needs s3.bucket" }}{{ end }}
{{- $_ := set $config "s3-redirect" true }}
{{- end }}
{{- with .Values.cache.localCacheSize }}
{{- $_ := set $config "local-cache-size" (toString .) }}
{{- end }}
{{- if include "regcache.hasRegistryCreds" . }}
{{- $_ := set $config "creds-file" (printf "%s/%s" (include "regcache.credsDir" .) .Values.registryCredentials.key) }}
{{- end }}
{{- if include "regcache.hasUpstreamCA" . }}
{{- $_ := set $config "upstream-ca" (printf "%s/%s" (include "regcache.caDir" .) .Values.upstreamCA.key) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
