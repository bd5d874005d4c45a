#!/usr/bin/env bash
# Prepare an NVIDIA Jetson (JetPack 5 / 6, aarch64) to receive edge-deploy bundles.
#
#   sudo deploy/jetson/setup.sh                  # report only: JetPack / L4T, power mode, clocks, CUDA, TensorRT
#   sudo deploy/jetson/setup.sh --install --trust fleet.pub [--ort-wheel onnxruntime_gpu-...-aarch64.whl]
#
# --install:
#   1. apt: python3-venv, python3-pip, and the JetPack runtime libraries ONNX Runtime's CUDA and
#      TensorRT execution providers load (nvidia-jetpack-runtime: CUDA, cuDNN, TensorRT);
#   2. onnxruntime-gpu: NVIDIA builds it per JetPack release (it is not a manylinux wheel); pass the
#      wheel you downloaded for this JetPack with --ort-wheel, or its index URL with --ort-index. It
#      goes into the system Python, and the vehicle is set up with system_site_packages so that the
#      slot venvs see it. Bundles for such a vehicle are built with --no-dependency-wheels (the
#      bundled CPU onnxruntime would otherwise shadow the GPU build), after installing the other
#      vehicle dependencies system-wide here (numpy, scipy, osqp, psutil, tokenizers);
#   3. users: `edge` runs the service, `deploy` is the ssh login of edge-deploy push;
#   4. the deploy agent venv /opt/edge_runtime/agent (edge_runtime[deploy] from --agent-wheel, or
#      from this checkout), `edge-deploy init` of /opt/edge_runtime with the trusted --trust key(s),
#      the systemd unit and the sudoers rule that lets `deploy` restart it.
# Nothing here can run off a Jetson; on another machine the report says "not a Jetson" and --install stops.
set -euo pipefail

ROOT=/opt/edge_runtime
INSTALL=0; TRUST=(); ORT_WHEEL=""; ORT_INDEX=""; AGENT_WHEEL=""
HERE="$(cd "$(dirname "$0")" && pwd)"
while [ $# -gt 0 ]; do
  case "$1" in
    --install) INSTALL=1 ;;
    --trust) TRUST+=("$2"); shift ;;
    --ort-wheel) ORT_WHEEL="$2"; shift ;;
    --ort-index) ORT_INDEX="$2"; shift ;;
    --agent-wheel) AGENT_WHEEL="$2"; shift ;;
    --root) ROOT="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '%-22s %s\n' "$1" "$2"; }
have() { command -v "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------------------------------ report
TEGRA_RELEASE="${TEGRA_RELEASE:-/etc/nv_tegra_release}"  # overridable for tests
if [ -r "$TEGRA_RELEASE" ]; then
  L4T=$(head -n1 "$TEGRA_RELEASE" | sed -E 's/^# R([0-9]+) \(release\), REVISION: ([0-9.]+).*/\1.\2/')
  say "L4T" "$L4T"
else
  say "L4T" "not a Jetson ($TEGRA_RELEASE missing)"
fi
say "JetPack" "$(dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null || echo 'nvidia-jetpack not installed')"
say "model" "$(tr -d '\0' 2>/dev/null </proc/device-tree/model || uname -m)"
say "power mode" "$(have nvpmodel && nvpmodel -q 2>/dev/null | tr '\n' ' ' || echo 'nvpmodel not found')"
if have jetson_clocks; then
  echo "jetson_clocks --show:"; jetson_clocks --show 2>&1 | sed 's/^/    /' || true
else
  say "jetson_clocks" "not found"
fi
say "CUDA" "$(cat /usr/local/cuda/version.json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["cuda"]["version"])' 2>/dev/null || (have nvcc && nvcc --version | tail -n1) || echo 'not found')"
say "TensorRT" "$(dpkg-query -W -f='${Version}' tensorrt 2>/dev/null || echo 'not installed')"
say "cuDNN" "$(dpkg-query -W -f='${Version}' libcudnn8 2>/dev/null || dpkg-query -W -f='${Version}' libcudnn9-cuda-12 2>/dev/null || echo 'not installed')"
say "Python" "$(python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo 'not found')"
say "glibc" "$(ldd --version 2>/dev/null | head -n1 | awk '{print $NF}')"
say "onnxruntime" "$(python3 -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' 2>/dev/null || echo 'not installed')"
echo "bundle for this vehicle: edge-deploy bundle MODEL.onnx --target $(uname -m) --python $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo X.Y) --glibc $(ldd --version 2>/dev/null | head -n1 | awk '{print $NF}') ..."

[ "$INSTALL" = 1 ] || exit 0

# ----------------------------------------------------------------------------------------- install
[ "$(id -u)" = 0 ] || { echo "setup.sh: --install needs root (sudo)" >&2; exit 2; }
[ -r "$TEGRA_RELEASE" ] || { echo "setup.sh: not a Jetson; --install stops here" >&2; exit 2; }
[ ${#TRUST[@]} -gt 0 ] || { echo "setup.sh: --install needs --trust KEY.pub (edge-deploy keygen on the host)" >&2; exit 2; }

apt-get update
apt-get install -y python3-venv python3-pip nvidia-jetpack-runtime || apt-get install -y python3-venv python3-pip nvidia-jetpack
if [ -n "$ORT_WHEEL" ]; then
  python3 -m pip install "$ORT_WHEEL"
elif [ -n "$ORT_INDEX" ]; then
  python3 -m pip install --extra-index-url "$ORT_INDEX" onnxruntime-gpu
else
  echo "setup.sh: note: no --ort-wheel / --ort-index: ONNX Runtime stays CPU-only (bundled wheels)" >&2
fi
if [ -n "$ORT_WHEEL$ORT_INDEX" ]; then
  python3 -m pip install "numpy>=1.24" "scipy>=1.10" "osqp>=1.0" "psutil>=5.9" "tokenizers>=0.15"
  python3 -c 'import onnxruntime as o; p=o.get_available_providers(); print("providers:", p); assert "CUDAExecutionProvider" in p'
fi

id edge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-runtime --shell /usr/sbin/nologin edge
id deploy >/dev/null 2>&1 || useradd --create-home --shell /bin/bash deploy
usermod -aG video edge  # /dev/nvhost-*, /dev/nvmap: the GPU

install -d -o deploy -g edge -m 0750 "$ROOT"
python3 -m venv "$ROOT/agent"
if [ -n "$AGENT_WHEEL" ]; then
  "$ROOT/agent/bin/pip" install "$AGENT_WHEEL[deploy]"
else
  "$ROOT/agent/bin/pip" install "$HERE/../..[deploy]"
fi
SYSTEM_SITE=--no-system-site-packages
[ -n "$ORT_WHEEL$ORT_INDEX" ] && SYSTEM_SITE=--system-site-packages
TRUST_ARGS=(); for k in "${TRUST[@]}"; do TRUST_ARGS+=(--trust "$k"); done
"$ROOT/agent/bin/edge-deploy" init --root "$ROOT" "${TRUST_ARGS[@]}" --python /usr/bin/python3 $SYSTEM_SITE \
  --telemetry-dir /var/lib/edge-runtime/telemetry \
  --restart-command "sudo -n /usr/bin/systemctl restart edge-runtime.service" \
  --is-active-command "/usr/bin/systemctl is-active --quiet edge-runtime.service"
chown -R deploy:edge "$ROOT"; chmod -R g+rX,o-rwx "$ROOT"
install -m 0644 "$HERE/../systemd/edge-runtime.service" /etc/systemd/system/edge-runtime.service
install -m 0440 "$HERE/../systemd/edge-deploy.sudoers" /etc/sudoers.d/edge-deploy
visudo -cf /etc/sudoers.d/edge-deploy
systemctl daemon-reload
systemctl enable edge-runtime.service
echo "ready: authorise the host's ssh key in ~deploy/.ssh/authorized_keys, then from the host:"
echo "  edge-deploy push NAME.bundle --target deploy@$(hostname) --known-hosts KNOWN_HOSTS --remote-edge-deploy $ROOT/agent/bin/edge-deploy --root $ROOT"
