#!/bin/bash
# Build a real kube-apiserver + kube-controller-manager (v1.20.2) and etcd from Debian bookworm's
# packages, once: the result is cached under $K8S120 (default /var/tmp/apiserver-1.20) and reused
# by every later run on this machine. No system changes: everything lands under $K8S120/build.
# Missing prerequisites (apt-get, dpkg, make, the source package) print one sentence naming what is
# missing and exit 0, so the test tier skips (tier_unavailable: under FLYWHEEL_REQUIRE_TIERS=1, as
# .ci/run sets it, they fail instead); a failing compile fails.
set -euo pipefail
# shellcheck source=k8s/container-tools.sh
. "$(dirname "$0")/../../k8s/container-tools.sh"
ROOT=${K8S120:-/var/tmp/apiserver-1.20}
W=$ROOT/build
K=$W/src/kubernetes-1.20.2
# The cache is keyed on this script (its packages, patches and build flags): an edit rebuilds.
KEY=$(sha256sum "$0" | cut -c1-16)
cached() { [[ -x $K/_output/bin/kube-apiserver && -x $K/_output/bin/kube-controller-manager && -x $W/root/usr/bin/etcd \
             && "$(cat "$W/.key" 2>/dev/null)" == "$KEY" ]]; }
if cached; then
  echo "apiserver: cached build in $W"; exit 0
fi
for tool in apt-get dpkg make tar flock; do
  command -v $tool >/dev/null || tier_unavailable "the real API server tier cannot be built here: $tool is missing."
done
mkdir -p "$ROOT"
exec 9>"$ROOT/.build.lock"
flock 9  # one build at a time on this machine; a second caller waits and then finds the cache
if cached; then
  echo "apiserver: cached build in $W"; exit 0
fi
start=$(date +%s)
rm -rf "$W"; mkdir -p "$W"/{apt/lists/partial,apt/cache/archives/partial,debs,root,src}
cd "$W"
echo 'deb-src http://deb.debian.org/debian bookworm main' > apt/sources.list
A="-o Dir::Etc::SourceList=$W/apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$W/apt/lists -o Dir::Cache=$W/apt/cache"
if ! apt-get $A -qq update || ! (cd src && apt-get $A -qq source --download-only kubernetes) \
   || ! (cd debs && apt-get -qq download golang-1.19-go golang-1.19-src rsync libpopt0 golang-github-modern-go-reflect2-dev etcd-server 2>/dev/null); then
  rm -rf "$W"
  tier_unavailable "the real API server tier cannot be built here: Debian bookworm's kubernetes source package (or golang-1.19, etcd-server) cannot be downloaded."
fi
for f in debs/*.deb; do dpkg -x "$f" root; done
mkdir -p bin; cat > bin/rsync <<EOR
#!/bin/sh
LD_LIBRARY_PATH=$W/root/usr/lib/x86_64-linux-gnu exec $W/root/usr/bin/rsync "\$@"
EOR
chmod +x bin/rsync
tar xzf src/kubernetes_*.orig.tar.gz -C src
# Go >= 1.18 + reflect2 1.0.1 => SIGSEGV in json-iterator map encoding; use Debian's reflect2 1.0.2
rm -f $K/vendor/github.com/modern-go/reflect2/*.go $K/vendor/github.com/modern-go/reflect2/*.s
cp root/usr/share/gocode/src/github.com/modern-go/reflect2/*.go root/usr/share/gocode/src/github.com/modern-go/reflect2/*.s $K/vendor/github.com/modern-go/reflect2/
# providerless: without the in-tree cloud providers and their SDKs (AWS, Azure, GCE, vSphere), which
# a loopback control plane never uses and which are a large part of what there is to compile.
export GOROOT=$W/root/usr/lib/go-1.19 PATH=$W/bin:$W/root/usr/lib/go-1.19/bin:$PATH GOCACHE=$W/gocache GOPATH=$W/gopath GOPROXY=off \
  GOFLAGS=-tags=providerless
# Of the generated sources only the OpenAPI definitions are missing from the source package (its
# deepcopy, defaults, conversion and prerelease-lifecycle files ship with it), so only they are
# generated: `make WHAT=...` would first regenerate every one of them over the whole tree.
# Niced: .ci/run builds this beside `make test`.
(cd $K && nice -n 10 make gen_openapi >/dev/null \
   && GOLDFLAGS="-s -w" nice -n 10 hack/make-rules/build.sh cmd/kube-apiserver cmd/kube-controller-manager >/dev/null)
echo "$KEY" > "$W/.key"
echo "apiserver: built kube-apiserver and kube-controller-manager 1.20.2 in $(( $(date +%s) - start ))s under $W"
