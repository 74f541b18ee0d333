{{/* The pod of the node-config DaemonSets: an init container that runs
`python -m regcache node-config <args>` against the node's containerd hosts dir, then a pause
container that keeps the pod (and so the DaemonSet's "done on every node") alive. The hosts dir
and containerd's config dir are mounted at their own paths, so the command's check of
config_path compares the paths containerd itself uses. */}}
{{- define "regcache.nodeConfigPodSpec" -}}
{{- $root := .root }}
{{- $values := $root.Values.nodeConfig }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: 5
securityContext:
  seccompProfile:
    type: RuntimeDefault
initContainers:
  - name: node-config
    image: {{ include "regcache.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    {{- with .env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    # Root, to write the node's root-owned hosts dir; nothing else.
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: ["ALL"]
    resources:
      {{- toYaml $values.resources | nindent 6 }}
    volumeMounts:
      - name: containerd-config
        mountPath: {{ dir $values.containerdConfig }}
        readOnly: true
      - name: hosts-dir
        mountPath: {{ $values.hostsDir }}
containers:
  - name: pause
    image: {{ printf "%s:%s" $values.pauseImage.repository $values.pauseImage.tag }}
    imagePullPolicy: IfNotPresent
    securityContext:
      runAsUser: 65535
      runAsGroup: 65535
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: ["ALL"]
    resources:
      requests:
        cpu: 1m
        memory: 8Mi
      limits:
        memory: 16Mi
volumes:
  - name: containerd-config
    hostPath:
      path: {{ dir $values.containerdConfig }}
      type: DirectoryOrCreate
  - name: hosts-dir
    hostPath:
      path: {{ $values.hostsDir }}
      type: DirectoryOrCreate
{{- end }}
