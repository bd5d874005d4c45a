"""Device call 2's last step: choose the pruned model to ship, pack it and the comparison for the way back.

    python bench/gpu/finish.py --root /tmp/w/bpf --ret /tmp/ret --out "$OUT" [--ratio 50 --budget-mib 60]

Selection (on the validation split only, never on test): among the finished runs at ``--ratio`` percent,
the one with the highest mean of its two validation retentions against the dense models (mean over
seeds): control adaptability / dense adaptability and decision accuracy / dense decision accuracy.
Writes ``selection.json`` (every candidate and its scores), ``results.tar.gz`` (the comparison's
directory without weights and tokenizers: summaries, metrics, prune reports, samples, evaluations, logs, status) and
the chosen model packed by ``bench/weights_transport.py``; copies into ``--out`` as many files as fit in
``--budget-mib`` (selection, results, manifest, files archive, then weight parts in order) and lists the
rest in ``--ret``/remaining.txt for the next call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import weights_transport  # noqa: E402

SKIP_SUFFIXES = (".safetensors", ".pt", ".bin", ".onnx", ".data", ".lock")
SKIP_NAMES = ("tokenizer.json",)  # the base model's, unchanged by every run (3.5 MB each)


def _eval(root: Path, name: str, split: str) -> dict | None:
    hits = sorted((root / "eval").glob(f"{name}-{split}-*.json"))
    hits = [h for h in hits if not h.name.endswith(".partial.json")]
    return json.loads(hits[0].read_text()) if hits else None


def _scores(report: dict) -> tuple[float, float]:
    return report["mpc"]["adaptability"]["overall"], report["decision"]["accuracy"]


def select(root: Path, ratio: int, split: str = "validation") -> dict:
    models = sorted(p.name for p in (root / "models").iterdir() if (p / "train_summary.json").exists())
    dense = [_eval(root, m, split) for m in models if m.startswith("dense-s")]
    dense = [d for d in dense if d]
    if not dense:  # the results still go back; nothing is chosen
        return {"split": split, "ratio_percent": ratio, "chosen": None, "candidates": [],
                "note": f"no dense model was evaluated on {split} before the deadline: nothing to compare against"}
    dense_adapt = sum(_scores(d)[0] for d in dense) / len(dense)
    dense_dec = sum(_scores(d)[1] for d in dense) / len(dense)
    candidates = []
    for m in models:
        if f"-{ratio}-s" not in m:
            continue
        report = _eval(root, m, split)
        if report is None:
            continue
        adapt, dec = _scores(report)
        keep = adapt / dense_adapt if dense_adapt > 0 else float("nan")
        candidates.append({"model": m, "adaptability": adapt, "decision_accuracy": dec,
                           "adaptability_retention": keep, "decision_retention": dec / dense_dec,
                           "score": (keep + dec / dense_dec) / 2, "parameters": report["parameters"]})
    candidates.sort(key=lambda c: -c["score"])
    return {"split": split, "ratio_percent": ratio, "rule": "max mean(adaptability / dense, decision / dense)",
            "dense": {"models": len(dense), "adaptability": dense_adapt, "decision_accuracy": dense_dec},
            "candidates": candidates, "chosen": candidates[0]["model"] if candidates else None}


def results_archive(root: Path, path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(SKIP_SUFFIXES) and p.name not in SKIP_NAMES:
                tar.add(p, arcname=str(p.relative_to(root.parent)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--ret", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ratio", type=int, default=50)
    ap.add_argument("--budget-mib", type=float, default=60.0)
    ap.add_argument("--max-files", type=int, default=8, help="files one call may hand back")
    args = ap.parse_args()
    args.ret.mkdir(parents=True, exist_ok=True)
    selection = select(args.root, args.ratio)
    (args.ret / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    print(json.dumps(selection, indent=1))
    results_archive(args.root, args.ret / "results.tar.gz")
    order = ["selection.json", "results.tar.gz"]
    if selection["chosen"]:
        manifest = weights_transport.pack(args.root / "models" / selection["chosen"], args.ret / "weights")
        for name in ("manifest.json", weights_transport.FILES, *manifest["parts"]):
            shutil.move(str(args.ret / "weights" / name), args.ret / name)
        order += ["manifest.json", weights_transport.FILES, *manifest["parts"]]
    used, copied, remaining = 0, 0, []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in order:
        size = (args.ret / name).stat().st_size
        if not remaining and used + size <= args.budget_mib * 2**20 and copied < args.max_files:
            shutil.copy2(args.ret / name, args.out / name)
            used, copied = used + size, copied + 1
        else:
            remaining.append(name)
    (args.ret / "remaining.txt").write_text("".join(f"{n}\n" for n in remaining))
    print(f"in this call: {used / 2**20:.1f} MiB; left for the next call: {remaining}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
