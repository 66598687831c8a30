# Sourced by hack/controlplane (its functions and variables in scope). A real worker node for the test control plane: containerd + runc (Debian), the bridge,
# host-local, loopback and portmap CNI plugins (Debian), a kubelet and kube-proxy (iptables
# mode) built from k8s.io/kubernetes like the other components, and CoreDNS (built from its Go
# module) on the host, answering for cluster.local. Called by hack/controlplane:
#
#   hack/controlplane node on    start containerd, kubelet, kube-proxy, CoreDNS; import the images
#   hack/controlplane node off   stop them, remove every pod sandbox, mount, rule and the bridge
#
# The node is named $NODE, labelled and tainted modelrollout.dev/real-node=true:NoSchedule so only
# pods that tolerate it land there. Its pods get 10.244.0.0/24 on bridge $BRIDGE, whose address
# (10.244.0.1) is the node's InternalIP, the API server's advertised address (the `kubernetes`
# Service routes there) and the cluster DNS server. Pod IPs are reachable from the host.
NODE=${MODELROLLOUT_NODE_NAME:-mr-node}
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
BRIDGE=mrbr0
CNI_BIN=${MODELROLLOUT_CNI_BIN:-/usr/lib/cni}
NODE_STATE=$STATE/node
OCI_RUNTIME=${MODELROLLOUT_OCI_RUNTIME:-runc}
SOCK=$NODE_STATE/containerd.sock
PAUSE_IMAGE=localhost/modelrollout-pause:1
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}  # the Go module of Prometheus 3.x
NODE_BIN=$CACHE/k8s-node-$K8S_VERSION
NODE_COMPONENTS=(kubelet kube-proxy)


# kubelet and kube-proxy from the same wrapper module as the control plane's binaries.
build_node() {
  local c missing=0
  for c in "${NODE_COMPONENTS[@]}"; do [ -x "$NODE_BIN/$c" ] || missing=1; done
  if [ $missing = 1 ]; then
    local src=$CACHE/src/k8s-node-$K8S_VERSION minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    local pkgs=(); for c in "${NODE_COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    wrapper_module "$src" k8s.io/kubernetes "$K8S_VERSION" "v0.${K8S_VERSION#v1.}" "${pkgs[@]}"
    local ld="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    mkdir -p "$NODE_BIN.tmp"
    for c in "${NODE_COMPONENTS[@]}"; do
      log "go build $c"
      (cd "$src" && go build -trimpath -ldflags "$ld" -o "$NODE_BIN.tmp/$c" "k8s.io/kubernetes/cmd/$c")
    done
    rm -rf "$NODE_BIN" && mv "$NODE_BIN.tmp" "$NODE_BIN"
  fi
  build_coredns
  build_pause
  build_prometheus
}

# Debian's Prometheus is built without Kubernetes service discovery; this one has it (and file/http),
# the other discovery plugins left out by Prometheus's own build tags.
build_prometheus() {
  local dir=$CACHE/prometheus-$PROMETHEUS_VERSION
  [ -x "$dir/prometheus" ] && return
  log "building Prometheus ($PROMETHEUS_VERSION) with Kubernetes service discovery"
  mkdir -p "$dir"
  GOBIN=$dir GOFLAGS= go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
}

# CoreDNS with only the plugins a cluster's DNS needs, the way CoreDNS documents building with a
# chosen plugin set: a main package that imports them and sets the directive order.
build_coredns() {
  local bin=$CACHE/coredns-$COREDNS_VERSION/coredns src=$CACHE/src/coredns-$COREDNS_VERSION
  [ -x "$bin" ] && return
  log "building CoreDNS $COREDNS_VERSION"
  mkdir -p "$src" "$(dirname "$bin")"
  cat >"$src/main.go" <<'GO'
// CoreDNS with the plugins a test cluster's DNS needs and nothing else.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	"github.com/coredns/coredns/coremain"
)

func init() {
	dnsserver.Directives = []string{"bind", "health", "ready", "log", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  printf 'module modelrollout.dev/build/coredns\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns %s\n' \
    "$COREDNS_VERSION" >"$src/go.mod"
  (cd "$src" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
}

# The pod sandbox image: no registry is reachable, so CRI's "pause" is a small Go program of ours
# (sleep until signalled, reap orphans), in an image made from scratch.
build_pause() {
  local out=$CACHE/images/pause-1.tar src=$CACHE/src/pause
  [ -s "$out" ] && return
  log "building $PAUSE_IMAGE"
  mkdir -p "$src" "$CACHE/images"
  cat >"$src/main.go" <<'GO'
// A pod sandbox's init process: hold the pod's namespaces until signalled, reaping orphans.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  printf 'module modelrollout.dev/build/pause\n\ngo 1.21\n' >"$src/go.mod"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o pause .)
  local c; c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$c" "$src/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  "${BUILDAH[@]}" commit -q "$c" "$PAUSE_IMAGE" >/dev/null
  "${BUILDAH[@]}" rm "$c" >/dev/null
  "${BUILDAH[@]}" push -q "$PAUSE_IMAGE" "oci-archive:$out.tmp:$PAUSE_IMAGE"
  mv "$out.tmp" "$out"
}

certs() {
  local pki=$STATE/pki
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE" \
    -keyout "$pki/node.key" -out "$pki/node.csr" 2>/dev/null
  openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -out "$pki/node.crt" 2>/dev/null
  serving_cert node-serving "IP:$NODE_IP,DNS:$NODE"
  kubeconfig "$NODE_STATE/kubelet.kubeconfig" "$pki/node.crt" "$pki/node.key"
}

kubeconfig() { # $1 path, $2 cert, $3 key
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$STATE/pki/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$2", client-key: "$3"}}]
contexts: [{name: local, context: {cluster: local, user: u}}]
current-context: local
KC
}

network() {
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$NODE_STATE/cni"
  cat >"$NODE_STATE/cni/10-modelrollout.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "modelrollout",
 "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_STATE/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
}

containerd_up() {
  mkdir -p "$CACHE/containerd" "$NODE_STATE/containerd"
  cat >"$NODE_STATE/containerd.toml" <<TOML
version = 2
root = "$CACHE/containerd"
state = "$NODE_STATE/containerd"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine withholds CAP_SYS_RESOURCE, so no process may lower an oom_score_adj (CRI asks
  # -998 for sandboxes): keep every container's at or above containerd's own, as rootless does.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$OCI_RUNTIME"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$NODE_STATE/cni"
TOML
  start containerd containerd --config "$NODE_STATE/containerd.toml"
  wait_for containerd ctr --address "$SOCK" version
}

# Every image archive under $CACHE/images that containerd does not hold yet (a warm run imports none).
import_images() {
  local f name have
  have=$(ctr --address "$SOCK" -n k8s.io images ls -q)
  for f in "$CACHE"/images/*.tar; do
    [ -e "$f" ] || continue
    name=$(tar -xOf "$f" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')
    grep -qxF "$name" <<<"$have" && continue
    log "importing $name"
    ctr --address "$SOCK" -n k8s.io images import --no-unpack=false "$f" >/dev/null
  done
}

kubelet_up() {
  local pki=$STATE/pki
  printf 'search cluster.local\n' >"$NODE_STATE/resolv.conf"  # pods never see the host's resolver
  cat >"$NODE_STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failCgroupV1: false   # this machine has cgroup v1; 1.35 refuses it unless told
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/node-serving.crt
tlsPrivateKeyFile: $pki/node-serving.key
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $NODE_STATE/resolv.conf
podCIDR: $POD_CIDR
maxPods: 40
registerWithTaints: [{key: modelrollout.dev/real-node, value: "true", effect: NoSchedule}]
# The disk is shared with everything else on the machine: never evict or collect images for it.
evictionHard: {memory.available: 200Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
serializeImagePulls: false
YAML
  start kubelet "$NODE_BIN/kubelet" --config "$NODE_STATE/kubelet.yaml" \
    --kubeconfig "$NODE_STATE/kubelet.kubeconfig" --hostname-override "$NODE" --node-ip "$NODE_IP" \
    --node-labels "modelrollout.dev/real-node=true" --root-dir "$NODE_STATE/kubelet" --cert-dir "$NODE_STATE/kubelet-pki"
  wait_for "node $NODE Ready" kctl wait --for=condition=Ready "node/$NODE" --timeout=2s
}

kube_proxy_up() {
  cat >"$NODE_STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}   # leave the machine's conntrack table size alone
YAML
  start kube-proxy "$NODE_BIN/kube-proxy" --config "$NODE_STATE/kube-proxy.yaml"
  wait_for kube-proxy curl -sf http://127.0.0.1:10256/livez
}

coredns_up() {
  cat >"$NODE_STATE/Corefile" <<COREFILE
.:53 {
  bind $NODE_IP
  health 127.0.0.1:10254
  ready 127.0.0.1:10253
  errors
  cache 5
  kubernetes cluster.local in-addr.arpa ip6.arpa {
    kubeconfig $STATE/kubeconfig local
    pods insecure
  }
}
COREFILE
  start coredns "$CACHE/coredns-$COREDNS_VERSION/coredns" -conf "$NODE_STATE/Corefile"
  wait_for coredns curl -sf http://127.0.0.1:10253/ready
}

kctl() { "$(cmd_bindir)/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

cmd_on() {
  [ -f "$STATE/kubeconfig" ] || { log "control plane not up"; return 1; }
  if [ -f "$STATE/kubelet.pid" ] && kill -0 "$(cat "$STATE/kubelet.pid")" 2>/dev/null; then import_images; return; fi
  build_node
  mkdir -p "$NODE_STATE"
  [ -f "$STATE/pki/node.crt" ] || certs
  network
  containerd_up
  import_images
  coredns_up
  kube_proxy_up
  kubelet_up
  log "node $NODE Ready ($NODE_IP, pods $POD_CIDR)"
}

cmd_off() {
  local p
  stop kubelet
  if [ -S "$SOCK" ]; then
    for p in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s SIGKILL "$p" >/dev/null 2>&1 || true
    done
    sleep 1
    for p in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks rm -f "$p" >/dev/null 2>&1 || true
    done
    for p in $(ctr --address "$SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io containers rm "$p" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $SOCK" 2>/dev/null || true
  stop kube-proxy
  "$NODE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop coredns
  # Mounts left by pods (volumes, sandboxes' /dev/shm) and their network namespaces.
  grep -oE " $NODE_STATE/[^ ]+" /proc/mounts | sort -r | while read -r p; do umount -l "$p" 2>/dev/null || true; done
  ip netns list 2>/dev/null | grep -oE '^cni-[0-9a-f-]+' | while read -r p; do ip netns del "$p" || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$NODE_STATE"
  kctl delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
