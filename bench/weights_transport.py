"""Carry a trained model directory off a machine whose file transfer is capped.

    python bench/weights_transport.py pack MODEL_DIR PARTS_DIR [--part-mib 14]
    python bench/weights_transport.py unpack PARTS_DIR MODEL_DIR

Why: the lent GPU machine hands back at most 64 MiB per call in files of at most 16 MiB, and a SmolLM2
model is 300-540 MB in fp32. ``pack`` writes every 2-D weight as int8 in blocks of 64 along a row
(symmetric, one fp16 scale per block: the rounding error is far below what the vehicle's int4 / 8-bit
export adds on top), every other tensor as fp32, in safetensors parts of at most ``--part-mib``, plus the directory's other
files (arch spec, tokenizer, chat format, training summary and metrics) in ``files.tar.gz`` and a
``manifest.json`` with the sha256 of every part and of the original weights. ``unpack`` checks every
part, dequantises, and writes a normal model directory (``save_model``) whose metadata says it was
transported as int8 and from which weights (their sha256), so no one mistakes it for the original.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
FILES = "files.tar.gz"
FORMAT = "edge_runtime.int8_transport"
BLOCK = 64  # weights per int8 scale along a row


def _sha256(path: Path) -> str:
    from edge_runtime.model.io import sha256_file

    return sha256_file(path)


def pack(model_dir: Path, parts_dir: Path, part_mib: float = 14.0) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{model_dir}: no model.safetensors; pass a model directory written by edge-train")
    parts_dir.mkdir(parents=True, exist_ok=True)
    limit = int(part_mib * 2**20)
    parts, current, size = [], {}, 0

    def flush() -> None:
        nonlocal current, size
        if current:
            name = f"part-{len(parts):02d}.safetensors"
            save_file(current, str(parts_dir / name))
            parts.append(name)
            current, size = {}, 0

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            t = f.get_tensor(key).float()
            if t.dim() == 2 and t.shape[1] % BLOCK == 0:
                blocks = t.reshape(t.shape[0], -1, BLOCK)
                scale = (blocks.abs().amax(dim=2, keepdim=True) / 127.0).clamp_min(1e-12).half().float()
                q = torch.round(blocks / scale).clamp(-127, 127).to(torch.int8).reshape(t.shape)
                scale = scale.squeeze(2).half()
                rows = max(1, limit // (t.shape[1] + 2 * scale.shape[1]))  # a tensor larger than a part: by rows
                chunks = [{f"{key}::q::{i}": q[r:r + rows].contiguous(),
                           f"{key}::scale::{i}": scale[r:r + rows].contiguous()}
                          for i, r in enumerate(range(0, t.shape[0], rows))]
            else:
                chunks = [{f"{key}::fp32::0": t.contiguous()}]
            for entries in chunks:
                need = sum(v.numel() * v.element_size() for v in entries.values())
                if size and size + need > limit:
                    flush()
                current.update(entries)
                size += need
    flush()
    with tarfile.open(parts_dir / FILES, "w:gz") as tar:
        for p in sorted(model_dir.iterdir()):
            if p.is_file() and p.name != "model.safetensors":
                tar.add(p, arcname=p.name)
    manifest = {"format": FORMAT, "source": str(model_dir), "source_weights_sha256": _sha256(weights),
                "parts": {name: _sha256(parts_dir / name) for name in parts}, FILES: _sha256(parts_dir / FILES)}
    (parts_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def unpack(parts_dir: Path, model_dir: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    from edge_runtime.contracts.arch_spec import ArchSpec
    from edge_runtime.model.build import materialize, skeleton
    from edge_runtime.model.io import save_model

    manifest_path = parts_dir / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{parts_dir}: no {MANIFEST}; pass the directory that 'pack' wrote")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, digest in [*manifest["parts"].items(), (FILES, manifest[FILES])]:
        path = parts_dir / name
        if not path.is_file():
            raise ValueError(f"{path}: missing; fetch every part listed in {MANIFEST} first")
        if _sha256(path) != digest:
            raise ValueError(f"{path}: sha256 differs from {MANIFEST}; the transfer is corrupt, fetch it again")
    files: dict[str, bytes] = {}
    with tarfile.open(parts_dir / FILES, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and "/" not in member.name:
                files[member.name] = tar.extractfile(member).read()
    spec = ArchSpec.from_dict(json.loads(files["arch_spec.json"]), source="arch_spec.json (transported)")
    raw: dict[str, torch.Tensor] = {}
    for name in manifest["parts"]:
        raw.update(load_file(str(parts_dir / name)))
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, t in raw.items():
        name, kind, index = key.rsplit("::", 2)
        if kind == "q":
            scale = raw[f"{name}::scale::{index}"].float()
            deq = (t.float().reshape(t.shape[0], scale.shape[1], -1) * scale.unsqueeze(2)).reshape(t.shape)
            pieces.setdefault(name, []).append((int(index), deq))
        elif kind == "fp32":
            pieces.setdefault(name, []).append((int(index), t))
    state = {name: torch.cat([t for _, t in sorted(ts, key=lambda x: x[0])]) for name, ts in pieces.items()}
    model = materialize(skeleton(spec), spec, state, torch.float32)
    meta = json.loads(files.get("edge_runtime_meta.json", b"{}"))
    metadata = dict(meta.get("metadata") or {})
    metadata["transport"] = {"format": FORMAT,
                             "weights": f"int8 in blocks of {BLOCK} along a row (symmetric, fp16 scales), "
                                        "other tensors fp32",
                             "source_weights_sha256": manifest["source_weights_sha256"],
                             "source": manifest["source"]}
    text_files = {n: files[n].decode("utf-8") for n in ("chat_template.jinja", "chat_format.json") if n in files}
    tokenizer = parts_dir / "tokenizer.transport.json" if "tokenizer.json" in files else None
    if tokenizer is not None:
        tokenizer.write_bytes(files["tokenizer.json"])
    try:
        save_model(model, model_dir, spec, tokenizer_json=tokenizer, metadata=metadata,
                   extra_files=text_files or None)
    finally:
        if tokenizer is not None:
            tokenizer.unlink(missing_ok=True)
    for name in ("train_summary.json", "metrics.jsonl"):  # the run's record, verbatim
        if name in files:
            (model_dir / name).write_bytes(files[name])
    return model_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("model_dir", type=Path)
    p.add_argument("parts_dir", type=Path)
    p.add_argument("--part-mib", type=float, default=14.0)
    u = sub.add_parser("unpack")
    u.add_argument("parts_dir", type=Path)
    u.add_argument("model_dir", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.command == "pack":
            m = pack(args.model_dir, args.parts_dir, args.part_mib)
            print(f"packed {args.model_dir} into {len(m['parts'])} parts + {FILES} in {args.parts_dir}")
        else:
            print(f"unpacked into {unpack(args.parts_dir, args.model_dir)}")
    except (ValueError, OSError) as exc:
        print(f"weights_transport: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
