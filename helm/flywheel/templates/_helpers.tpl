{{/* Labels every object carries. */}}
{{- define "flywheel.labels" -}}
app.kubernetes.io/part-of: flywheel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Image reference: registry/name:tag, or registry/name@digest when a digest is given.
     Call with (dict "root" $ "image" .Values.serving.image). */}}
{{- define "flywheel.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- if .image.digest -}}
{{- printf "%s/%s@%s" $registry .image.name .image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $registry .image.name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* Pod securityContext for the Pod Security Standard "restricted" profile. */}}
{{- define "flywheel.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container securityContext for the "restricted" profile; writable paths are emptyDirs. */}}
{{- define "flywheel.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Settings from the ConfigMap, storage credentials only from the Secret. */}}
{{- define "flywheel.configEnv" -}}
envFrom:
  - configMapRef:
      name: flywheel-config
env:
  - name: AWS_ACCESS_KEY_ID
    valueFrom:
      secretKeyRef:
        name: {{ .Values.config.s3.existingSecret }}
        key: AWS_ACCESS_KEY_ID
  - name: AWS_SECRET_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ .Values.config.s3.existingSecret }}
        key: AWS_SECRET_ACCESS_KEY
{{- end }}

{{- define "flywheel.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* checkov skips shared by every Flywheel workload, each with its reason. */}}
{{- define "flywheel.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=images are pinned by release tag; set <workload>.image.digest to pin by digest
checkov.io/skip2: CKV_K8S_35=the storage credentials reach the settings object as the standard AWS_* variables, which is the contract
{{- end }}

{{/* The pipeline step pods' ServiceAccount in config.kfp.namespace: the deploy step's identity. */}}
{{- define "flywheel.stepServiceAccount" -}}
{{- if .Values.rbac.deployer.serviceAccount -}}
{{- .Values.rbac.deployer.serviceAccount -}}
{{- else if eq .Values.config.kfp.mode "multi-user" -}}
default-editor
{{- else -}}
pipeline-runner
{{- end -}}
{{- end }}

{{/* The Pushgateway the monitor pushes to: config.monitoring.pushgateway, else the chart's own when enabled. */}}
{{- define "flywheel.pushgatewayURL" -}}
{{- if .Values.config.monitoring.pushgateway -}}
{{- .Values.config.monitoring.pushgateway -}}
{{- else if .Values.pushgateway.enabled -}}
{{- printf "http://flywheel-pushgateway.%s.svc:%d" .Release.Namespace (int .Values.pushgateway.service.port) -}}
{{- end -}}
{{- end }}

{{/* The claim holding the Evidently workspace. */}}
{{- define "flywheel.evidentlyClaim" -}}
{{- .Values.evidentlyUI.persistence.existingClaim | default "flywheel-evidently" -}}
{{- end }}
