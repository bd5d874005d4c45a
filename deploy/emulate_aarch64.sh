#!/usr/bin/env bash
# aarch64 for real, under emulation: an arm64 Debian root (debootstrap + qemu-user-static, both from
# Debian's packages), an aarch64 bundle installed into it by the vehicle agent exactly as on a
# vehicle (signature, hashes, offline venv from the bundled aarch64 wheels, edge-run --selftest,
# switch, service watch), then edge-run --selftest once more, its JSON line kept as the result.
#
#   sudo nice -n 19 deploy/emulate_aarch64.sh            # WORK=/var/tmp/edge-aarch64 (root fs cached there)
#
# Needs root (debootstrap, chroot, binfmt_misc), the host's apt sources (the mirror is taken from
# them; MIRROR=... overrides) and pip's package index for the aarch64 wheels. Takes ~20-40 min on
# 2 cores the first time (the root fs is cached for the next run). Result: $WORK/result.md, the
# block recorded in deploy/README.md.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/edge-aarch64}"
SUITE="${SUITE:-bookworm}"
MODEL="${MODEL:-$REPO/models/tiny/dense.onnx}"
EDGE_DEPLOY="${EDGE_DEPLOY:-$REPO/.venv/bin/edge-deploy}"
HOST_PY="${HOST_PY:-$REPO/.venv/bin/python}"
ROOTFS="$WORK/rootfs"
RATE="${RATE:-20}"  # the bundle's control rate, at which the selftest must have 0 overruns
VROOT=/opt/edge_runtime  # inside the arm64 root

[ "$(id -u)" = 0 ] || { echo "emulate_aarch64.sh: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }
[ -x "$EDGE_DEPLOY" ] || { echo "emulate_aarch64.sh: $EDGE_DEPLOY not found; pip install -e '.[deploy]' first" >&2; exit 2; }
mkdir -p "$WORK"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# -- 1. Debian's debootstrap and qemu-user-static ------------------------------------------------
if ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ]; then
  log "apt-get install debootstrap qemu-user-static"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap qemu-user-static >/dev/null
fi

# -- 2. binfmt_misc: the kernel runs aarch64 ELF files through qemu (F: also inside the chroot) -----
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -r "$conf" ] || { echo "emulate_aarch64.sh: $conf missing (qemu-user-static)" >&2; exit 1; }
  cat "$conf" > /proc/sys/fs/binfmt_misc/register
fi
log "binfmt: $(head -n2 /proc/sys/fs/binfmt_misc/qemu-aarch64 | tr '\n' ' ')"

# -- 3. the arm64 root (cached) ---------------------------------------------------------------------
if [ ! -f "$ROOTFS/.edge-rootfs-ready" ]; then
  MIRROR="${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
  MIRROR="${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}"
  [ -n "$MIRROR" ] || { echo "emulate_aarch64.sh: no Debian mirror in the apt sources; set MIRROR" >&2; exit 2; }
  rm -rf "$ROOTFS"
  log "debootstrap --arch=arm64 $SUITE (minbase + python3)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,procps "$SUITE" "$ROOTFS" "$MIRROR" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; exit 1; }
  touch "$ROOTFS/.edge-rootfs-ready"
fi
PY_VERSION=$(chroot "$ROOTFS" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GLIBC=$(chroot "$ROOTFS" /usr/bin/ldd --version | sed -n 1p | awk '{print $NF}')
log "arm64 root: $(cat "$ROOTFS/etc/debian_version"), $(chroot "$ROOTFS" uname -m), Python $PY_VERSION, glibc $GLIBC"

cleanup() {
  chroot "$ROOTFS" /bin/sh -c "EDGE_DEPLOY_ROOT=$VROOT /opt/fake-svc stop" >/dev/null 2>&1 || true
  for m in dev proc; do  # the stopped service may take a moment to let go of them
    for _ in $(seq 20); do mountpoint -q "$ROOTFS/$m" || break; umount "$ROOTFS/$m" 2>/dev/null || sleep 0.5; done
  done
}
trap cleanup EXIT
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
# no /sys: with the host's /sys bound in, onnxruntime's cpuinfo reads x86 CPU data and the aarch64
# process dies under qemu (SIGSEGV, seen with onnxruntime 1.32 / qemu 7.2); without it ORT warns and runs

# -- 4. the bundle (host side) and the agent's wheels ------------------------------------------------
[ -f "$WORK/fleet.key" ] || "$EDGE_DEPLOY" keygen "$WORK/fleet" >/dev/null
log "edge-deploy bundle $(basename "$MODEL") --target aarch64 --python $PY_VERSION --glibc $GLIBC"
"$EDGE_DEPLOY" bundle "$MODEL" --key "$WORK/fleet.key" --target aarch64 --python "$PY_VERSION" --glibc "$GLIBC" \
  --threads 2 --rate "$RATE" --name "emulated-aarch64" -o "$WORK/aarch64.bundle"
rm -rf "$WORK/agent-wheels" && mkdir -p "$WORK/agent-wheels"
"$HOST_PY" -m pip download -q --only-binary=:all: --implementation cp --python-version "$PY_VERSION" \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  -d "$WORK/agent-wheels" "cryptography>=42"
tar -xf "$WORK/aarch64.bundle" -C "$WORK/agent-wheels" --strip-components=1 --wildcards 'wheels/edge_runtime-*.whl'

# -- 5. the vehicle agent in the arm64 root (as deploy/jetson/setup.sh does on a Jetson) ----------
rm -rf "$ROOTFS$VROOT" "$ROOTFS/tmp/agent-wheels" && mkdir -p "$ROOTFS$VROOT"
cp -r "$WORK/agent-wheels" "$ROOTFS/tmp/agent-wheels"
cp "$WORK/fleet.pub" "$ROOTFS/tmp/fleet.pub"
cat > "$ROOTFS/opt/fake-svc" <<'SVC'
#!/bin/bash
# no systemd in a chroot: restart runs the unit's ExecStart (edge-deploy run) in the background
ROOT="${EDGE_DEPLOY_ROOT:?}"; PIDF="$ROOT/service.pid"
alive() { [ -f "$PIDF" ] && p=$(cat "$PIDF") && [ -r /proc/$p/stat ] && [ "$(awk '{print $3}' /proc/$p/stat)" != Z ]; }
case "$1" in
  restart) if alive; then kill "$(cat "$PIDF")"; sleep 2; fi
           setsid /opt/edge_runtime/agent/bin/edge-deploy run --root "$ROOT" >>"$ROOT/service.log" 2>&1 </dev/null &
           echo $! >"$PIDF" ;;
  is-active) alive ;;
  stop) alive && kill "$(cat "$PIDF")"; rm -f "$PIDF"; true ;;
esac
SVC
chmod +x "$ROOTFS/opt/fake-svc"
log "agent venv (edge_runtime --no-deps + cryptography) under qemu"
chroot "$ROOTFS" /bin/sh -ec "
  python3 -m venv $VROOT/agent
  $VROOT/agent/bin/pip install -q --no-index --find-links /tmp/agent-wheels cryptography
  $VROOT/agent/bin/pip install -q --no-index --no-deps /tmp/agent-wheels/edge_runtime-*.whl
  $VROOT/agent/bin/edge-deploy init --root $VROOT --trust /tmp/fleet.pub --python /usr/bin/python3 \
    --restart-command '/opt/fake-svc restart' --is-active-command '/opt/fake-svc is-active' --watch 20"

# -- 6. install: verify, offline venv from the bundled aarch64 wheels, selftest, switch, watch -----
cp "$WORK/aarch64.bundle" "$ROOTFS$VROOT/staging/aarch64.part"
log "edge-deploy install (under qemu)"
start=$(date +%s)
set +e
chroot "$ROOTFS" "$VROOT/agent/bin/edge-deploy" install "$VROOT/staging/aarch64.part" --root "$VROOT" \
  > "$WORK/install.log" 2>&1
install_rc=$?
set -e
install_s=$(( $(date +%s) - start ))
cat "$WORK/install.log"
log "edge-deploy status: $(chroot "$ROOTFS" "$VROOT/agent/bin/edge-deploy" status --root "$VROOT")"

# -- 7. the health check once more, its JSON line the result ----------------------------------------
SLOT="$VROOT/current"  # the installed slot; the refused one when the install failed
[ -e "$ROOTFS$SLOT" ] || SLOT="$VROOT/slots/a"
log "edge-run --selftest --rate $RATE in $SLOT (under qemu)"
set +e
chroot "$ROOTFS" "$SLOT/venv/bin/edge-run" --selftest --model "$SLOT/bundle/model/model.onnx" \
  --threads 2 --rate "$RATE" > "$WORK/selftest.json"
rc=$?
set -e
QEMU=$(/usr/bin/qemu-aarch64-static --version | sed -n 1p)
ORT=$(chroot "$ROOTFS" "$SLOT/venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')
cat > "$WORK/result.md" <<RES
Last run: $(date -u +%Y-%m-%dT%H:%MZ), host $(uname -m) $(nproc) cores, $QEMU, arm64 Debian $(cat "$ROOTFS/etc/debian_version"),
Python $PY_VERSION, glibc $GLIBC, onnxruntime $ORT (aarch64 wheel from the bundle), model $(basename "$MODEL");
\`edge-deploy install\` under qemu: exit $install_rc after ${install_s} s ($(tail -n1 "$WORK/install.log")).
\`edge-run --selftest --rate $RATE\` exit $rc:

\`\`\`json
$(cat "$WORK/selftest.json")
\`\`\`
RES
cat "$WORK/result.md"
exit $rc
