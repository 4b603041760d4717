#!/usr/bin/env bash
# Installs the Debian 12 packages kvidx builds, tests and runs with. Idempotent and quick when
# everything is already there. Run as root (or with sudo available).
set -euo pipefail
PKGS=(
  build-essential pkg-config meson ninja-build ccache
  libboost-dev libxxhash-dev libabsl-dev
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libsystemd-dev libtomlplusplus-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
  python3 python3-zmq python3-msgpack python3-grpcio python3-grpc-tools python3-xxhash
  systemd clang-format clang-tidy clang libclang-rt-14-dev gcovr
  libhiredis-dev redis-server
  libc-ares-dev dnsmasq-base curl python3-websocket python3-protobuf nlohmann-json3-dev libssl-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
