{{/* Names ----------------------------------------------------------------------------------- */}}
{{- define "alien.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alien.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "alien.operatorServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "alien.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "alien.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "alien.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: alien-data-cluster
{{- end -}}

{{- define "alien.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alien.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one image, by digest when one is given ------------------------------------------- */}}
{{- define "alien.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "alien.dataApiImage" -}}
{{- $d := .Values.tenantDefaults.dataApi.image -}}
{{- if or $d.repository $d.tag -}}
{{- printf "%s:%s" (default .Values.image.repository $d.repository) (default (default .Chart.AppVersion .Values.image.tag) $d.tag) -}}
{{- else -}}
{{- include "alien.image" . -}}
{{- end -}}
{{- end -}}

{{- define "alien.dagsterInstance" -}}
{{- printf "%s-dagster-instance" (include "alien.fullname" .) -}}
{{- end -}}

{{/* A credential: the Secret must be named, the chart never invents one ------------------- */}}
{{- define "alien.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "%s is required: the chart creates no Secret, name one you created" .path) .secret | quote }}
      key: {{ .key | quote }}
{{- end -}}

{{/* Environment of the control plane (operator, code server): the cluster's keys --------- */}}
{{- define "alien.controlPlaneEnv" -}}
{{- $s := .Values.stores -}}
{{- $pg := $s.postgresql -}}
{{- include "alien.secretEnv" (dict "env" "ALIEN_POSTGRES_USER" "secret" $pg.existingSecret "key" $pg.secretKeys.username "path" "stores.postgresql.existingSecret") }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_POSTGRES_PASSWORD" "secret" $pg.existingSecret "key" $pg.secretKeys.password "path" "stores.postgresql.existingSecret") }}
- name: ALIEN_POSTGRES_URL
  value: {{ printf "postgresql://$(ALIEN_POSTGRES_USER)@%s:%d/%s?sslmode=%s" (required "stores.postgresql.host is required" $pg.host) (int $pg.port) $pg.database $pg.sslmode | quote }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_CLUSTER_SECRET" "secret" $s.clusterKey.existingSecret "key" $s.clusterKey.secretKey "path" "stores.clusterKey.existingSecret") }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_S3_ACCESS_KEY" "secret" $s.objectStore.existingSecret "key" $s.objectStore.secretKeys.accessKey "path" "stores.objectStore.existingSecret") }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_S3_SECRET_KEY" "secret" $s.objectStore.existingSecret "key" $s.objectStore.secretKeys.secretKey "path" "stores.objectStore.existingSecret") }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_QDRANT_API_KEY" "secret" $s.qdrant.existingSecret "key" $s.qdrant.secretKeys.apiKey "path" "stores.qdrant.existingSecret") }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_MEILI_MASTER_KEY" "secret" $s.meilisearch.existingSecret "key" $s.meilisearch.secretKeys.masterKey "path" "stores.meilisearch.existingSecret") }}
{{- with .Values.mistral.apiKey.existingSecret }}
{{ include "alien.secretEnv" (dict "env" "MISTRAL_API_KEY" "secret" . "key" $.Values.mistral.apiKey.secretKey "path" "mistral.apiKey.existingSecret") }}
{{- end }}
{{- with .Values.platform.token.existingSecret }}
{{ include "alien.secretEnv" (dict "env" "ALIEN_PLATFORM_TOKEN" "secret" . "key" $.Values.platform.token.secretKey "path" "platform.token.existingSecret") }}
{{- end }}
{{- $dpg := .Values.dagster.postgresql }}
- name: DAGSTER_PG_USERNAME
  value: {{ $dpg.username | quote }}
{{ include "alien.secretEnv" (dict "env" "DAGSTER_PG_PASSWORD" "secret" $dpg.existingSecret "key" $dpg.secretKey "path" "dagster.postgresql.existingSecret") }}
{{- end -}}

{{/* Writable volumes of a read-only root file system -------------------------------------- */}}
{{- define "alien.writableMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/alien
{{- end -}}

{{- define "alien.writableVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "alien.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The stores' ports, for egress rules ---------------------------------------------------- */}}
{{- define "alien.storePorts" -}}
{{- $p := .Values.stores.ports -}}
{{- list (int $p.postgresql) (int $p.objectStore) (int $p.qdrant) (int $p.meilisearch) | uniq | toYaml -}}
{{- end -}}

{{- define "alien.storePortRules" -}}
{{- $rules := list -}}
{{- range (include "alien.storePorts" . | fromYamlArray) -}}
{{- $rules = append $rules (dict "protocol" "TCP" "port" .) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
