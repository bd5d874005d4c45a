"""``edge-deploy``: signed model bundles installed on a vehicle computer with A/B slots (docs/deploy.md).

Host:     keygen NAME | bundle MODEL.onnx --key K --target aarch64 -o X.bundle | verify X.bundle --trust K.pub
          push X.bundle --target user@host --known-hosts FILE
Vehicle:  init --trust K.pub | status | list | rollback | install STAGED (what push runs) | prepare | run
          (status / list / rollback also from the host with --target user@host)

Exit status: 0 done; 1 refused or failed -- the previous version still runs, the line says why;
2 bad input (one line, nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from .errors import DeployError

DEFAULT_ROOT = os.environ.get("EDGE_DEPLOY_ROOT", "/opt/edge_runtime")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=DEFAULT_ROOT, metavar="DIR",
                   help="vehicle root (slots, keys, vehicle.json) (default: $EDGE_DEPLOY_ROOT or %(default)s)")


def _ssh(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--target", required=required, metavar="USER@HOST", dest="ssh_target",
                   help="the vehicle, reached with the system ssh client" + ("" if required else
                                                                              " (default: run here, on the vehicle)"))
    p.add_argument("--port", type=int, default=22, help="ssh port (default: %(default)s)")
    p.add_argument("--known-hosts", type=Path, default=None, metavar="FILE",
                   help="known_hosts file holding the vehicle's host key; an unknown key is refused "
                        "(default: ssh's own known_hosts files)")
    p.add_argument("--identity", type=Path, default=None, metavar="KEY",
                   help="ssh private key for the login (default: ssh's choice)")
    p.add_argument("--remote-edge-deploy", default="edge-deploy", metavar="CMD",
                   help="the edge-deploy command on the vehicle (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-deploy", description=__doc__.split("\n\n")[0].replace("``", ""),
                epilog="Exit status: 0 done; 1 refused or failed (the previous version keeps running); 2 bad input.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    k = sub.add_parser("keygen", help="make an Ed25519 signing key pair NAME.key / NAME.pub")
    k.add_argument("name", metavar="NAME")

    b = sub.add_parser("bundle", help="build a signed, deterministic bundle")
    b.add_argument("model", type=Path, metavar="MODEL.onnx")
    b.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edge-deploy keygen)")
    b.add_argument("--target", choices=("aarch64", "x86_64"), default="aarch64",
                   help="CPU of the vehicle computer (default: %(default)s)")
    b.add_argument("--python", default="3.10", metavar="X.Y",
                   help="the vehicle's Python version, for the wheels (default: %(default)s, JetPack 6)")
    b.add_argument("--glibc", default="2.35", metavar="2.N",
                   help="the vehicle's glibc: newest manylinux wheels taken (default: %(default)s, JetPack 6)")
    b.add_argument("-o", "--output", type=Path, required=True, metavar="NAME.bundle")
    b.add_argument("--name", default=None, help="bundle name (default: MODEL-VERSION-TARGET)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--instruction", default=None, help="the instruction the service drives with and the "
                                                          "selftest answers (default: edge-run's default)")
    src.add_argument("--script", type=Path, default=None, help="instruction script for the service (edge-run --script)")
    b.add_argument("--engine", type=Path, default=None, help="optional TensorRT engine (deploy/build_trt_engine.py)")
    b.add_argument("--latency-budget", type=float, default=5.0, metavar="S",
                   help="selftest: the answer must arrive within S seconds on the vehicle (default: %(default)s)")
    b.add_argument("--rate", type=float, default=20.0, metavar="HZ",
                   help="the service's control rate; the selftest drives at it with 0 overruns allowed "
                        "(default: %(default)s)")
    b.add_argument("--threads", type=int, default=None, help="edge-run --threads on the vehicle (default: ORT's)")
    b.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="extra edge-run argument for the service, repeatable (e.g. --run-arg=--threads=2)")
    b.add_argument("--runtime-wheel", type=Path, default=None,
                   help="the edge_runtime wheel to ship (default: built from this checkout with pip wheel)")
    b.add_argument("--wheels-from", type=Path, default=None, metavar="DIR",
                   help="take the dependency wheels from DIR only (pip --no-index --find-links; offline) "
                        "(default: pip download from the configured index)")
    b.add_argument("--no-dependency-wheels", action="store_true",
                   help="ship the runtime wheel only; the vehicle must already provide numpy, onnxruntime, ... "
                        "(system_site_packages) (default: off)")
    b.add_argument("--created", type=int, default=None, metavar="EPOCH",
                   help="creation time in seconds (default: $SOURCE_DATE_EPOCH, else now)")

    v = sub.add_parser("verify", help="check a bundle's signature and every file's sha256")
    v.add_argument("bundle", type=Path)
    v.add_argument("--trust", type=Path, action="append", required=True, metavar="KEY.pub")

    pu = sub.add_parser("push", help="upload a bundle to the vehicle and install it there")
    pu.add_argument("bundle", type=Path)
    _ssh(pu, required=True)
    pu.add_argument("--root", default="/opt/edge_runtime", help="vehicle root on the vehicle (default: %(default)s)")
    pu.add_argument("--limit-kbps", type=int, default=None, help="sftp bandwidth limit in Kbit/s (default: none)")

    i = sub.add_parser("init", help="(vehicle) set up a vehicle root: directories, trusted keys, vehicle.json")
    _root(i)
    i.add_argument("--trust", type=Path, action="append", default=[], metavar="KEY.pub")
    i.add_argument("--python", default=None, help="interpreter for the slot venvs (default: /usr/bin/python3)")
    i.add_argument("--restart-command", default=None, help="service restart command line "
                                                           "(default: systemctl restart edge-runtime.service)")
    i.add_argument("--is-active-command", default=None,
                   help="exit 0 while the service runs (default: systemctl is-active --quiet edge-runtime.service)")
    i.add_argument("--watch", type=float, default=None, metavar="S", help="seconds to watch after a switch (default: 30)")
    i.add_argument("--telemetry-dir", default=None, help="telemetry directory (default: ROOT/telemetry)")
    i.add_argument("--telemetry-keep", type=int, default=None, help="telemetry runs kept (default: 20)")
    i.add_argument("--min-free-mb", type=int, default=None, help="free space kept after an install (default: 200)")
    i.add_argument("--system-site-packages", action=argparse.BooleanOptionalAction, default=None,
                   help="slot venvs see the system's packages (JetPack onnxruntime-gpu) (default: off)")

    pr = sub.add_parser("prepare", help="(vehicle, used by push) staging file and resume offset")
    _root(pr)
    pr.add_argument("--sha256", required=True)
    pr.add_argument("--size", type=int, required=True)

    ins = sub.add_parser("install", help="(vehicle, used by push) verify and install a staged bundle")
    ins.add_argument("staged", type=Path)
    _root(ins)
    ins.add_argument("--expect-sha256", default=None)

    for name, text in (("status", "the current slot, both slots' states, the service"),
                       ("list", "both slots, one line each"), ("rollback", "switch to the other (good) slot")):
        sp = sub.add_parser(name, help=text)
        _ssh(sp, required=False)
        _root(sp)

    r = sub.add_parser("run", help="(vehicle, the systemd unit's ExecStart) run the current slot's edge-run")
    _root(r)
    return p


def _target(args: argparse.Namespace):
    from .push import SshTarget

    return SshTarget(args.ssh_target, port=args.port, known_hosts=args.known_hosts, identity=args.identity,
                     root=args.root, agent=args.remote_edge_deploy)


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "keygen":
        from .signing import generate_keypair

        key, pub = generate_keypair(args.name)
        print(f"private key {key} (keep it off the vehicles), public key {pub} (edge-deploy init --trust {pub})")
        return 0
    if cmd == "bundle":
        from .bundle import BundleSpec, build_bundle

        spec = BundleSpec(model=args.model, output=args.output, key=args.key, target=args.target, python=args.python,
                          glibc=args.glibc, name=args.name, instruction=args.instruction, script=args.script,
                          engine=args.engine, latency_budget_s=args.latency_budget, rate_hz=args.rate, threads=args.threads,
                          run_args=tuple(args.run_arg), runtime_wheel=args.runtime_wheel,
                          wheels_from=args.wheels_from, dependency_wheels=not args.no_dependency_wheels,
                          created=args.created)
        out, manifest = build_bundle(spec)
        print(f"{out}: {manifest.name}, {len(manifest.files)} files, {out.stat().st_size / 2**20:.1f} MiB, "
              f"target {manifest.arch} / Python {manifest.python}, created {manifest.raw['created']}")
        return 0
    if cmd == "verify":
        from .bundle import inspect
        from .signing import load_public_key

        print(json.dumps(inspect(args.bundle, [load_public_key(k) for k in args.trust]), sort_keys=True))
        return 0
    if cmd == "push":
        from .push import push

        push(args.bundle, _target(args), args.limit_kbps)
        print(f"edge-deploy: {args.bundle.name} installed on {args.ssh_target}")
        return 0
    if cmd in ("status", "list", "rollback") and args.ssh_target:
        from .push import remote

        return remote(_target(args), cmd)
    root = Path(args.root).absolute()
    from . import vehicle

    if cmd == "init":
        overrides = {k: v for k, v in (("python", args.python), ("watch_s", args.watch),
                                       ("telemetry_dir", args.telemetry_dir), ("telemetry_keep", args.telemetry_keep),
                                       ("min_free_mb", args.min_free_mb),
                                       ("system_site_packages", args.system_site_packages)) if v is not None}
        for key, value in (("restart_command", args.restart_command), ("is_active_command", args.is_active_command)):
            if value is not None:
                overrides[key] = shlex.split(value)
        path = vehicle.init_root(root, args.trust, overrides)
        print(f"vehicle root {root} ready ({path.name}, {len(list((root / 'keys').glob('*.pub')))} trusted keys)")
        return 0
    if cmd == "prepare":
        print(json.dumps(vehicle.prepare_upload(root, args.sha256, args.size)))
        return 0
    if cmd == "install":
        result = vehicle.install(root, args.staged, args.expect_sha256, echo=lambda s: print(s, flush=True))
        print(f"installed {result['installed']} in slot {result['slot']} (previous: {result['previous']}); service up")
        return 0
    if cmd == "status":
        print(json.dumps(vehicle.status(root), sort_keys=True, default=str))
        return 0
    if cmd == "list":
        st = vehicle.status(root)
        for slot, s in st["slots"].items():
            mark = "*" if slot == st["current"] else " "
            print(f"{mark} {slot}  {s.get('status', '?'):10s} {s.get('name') or '-'}  created {s.get('created') or '-'}"
                  + (f"  ({s['reason']})" if s.get("reason") else ""))
        return 0
    if cmd == "rollback":
        result = vehicle.rollback(root)
        print(f"rolled back: slot {result['current']} ({result['name']}) is current, service up")
        return 0
    if cmd == "run":
        vehicle.exec_current(root)  # does not return
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return _dispatch(args)
    except DeployError as exc:
        print(f"edge-deploy: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("edge-deploy: error: interrupted; the vehicle keeps its current version", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
