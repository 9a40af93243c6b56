"""Pack a Triton wheel small enough to carry to a GPU machine (under 64 MiB).

The GPU machines here have Triton 3.6.0, inside the range 3.4.0-3.7.0 that miscompiles
``tl.trans`` of ``tl.dot`` results on Hopper (flash-linear-attention #640: fla 0.5.2 then
refuses its gated backward). A triton 3.7.1 wheel is 190 MB, most of it an unstripped
``libtriton.so`` (440 MB, 180 MB stripped). This keeps what compiling and launching for
NVIDIA needs (the Python package, ``libtriton.so`` stripped, ``ptxas``, the CUDA headers
and libdevice) and drops the profiler (proton, CUPTI), the Blackwell ``ptxas``, the
disassemblers and test plugins, into an ``.tar.xz`` of about 45 MB::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d /tmp/wh triton==3.7.1
    python -m atlas_search.bench.pack_triton /tmp/wh/triton-3.7.1-*.whl .t371/triton.tar.xz

and on the GPU machine (``carry: [".whl", ".t371"]``)::

    mkdir -p /tmp/site && tar -xJf .t371/triton.tar.xz -C /tmp/site
    PYTHONPATH=/tmp/site:. python3 -m atlas_search.bench.gpu_check --out $OUT

Needs ``strip`` (binutils) and ``xz``; standard library otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DROP = (
    "triton/backends/nvidia/bin/ptxas-blackwell",
    "triton/backends/nvidia/bin/nvdisasm",
    "triton/backends/nvidia/bin/cuobjdump",
    "triton/backends/nvidia/lib/cupti/",
    "triton/instrumentation/",
    "triton/plugins/",
    "triton/FileCheck",
    "triton/_C/libproton.so",
    "triton/profiler/",
)


def kept(name: str) -> bool:
    return not any(name == d or name.startswith(d) for d in DROP)


def pack(wheel: Path, out: Path) -> int:
    """Unzip the kept files of ``wheel``, strip ``libtriton.so``, write ``out``; returns its
    size in bytes."""
    with tempfile.TemporaryDirectory(prefix="pack-triton-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if kept(info.filename):
                    z.extract(info, root)
                    mode = info.external_attr >> 16
                    if mode:
                        (root / info.filename).chmod(mode & 0o777)
        lib = root / "triton" / "_C" / "libtriton.so"
        subprocess.run(["strip", "--strip-unneeded", str(lib)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in root.iterdir())
        with open(out, "wb") as fh:
            tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(root), *names],
                                   stdout=subprocess.PIPE)
            subprocess.run(["xz", "-T0", "-6"], stdin=tar.stdout, stdout=fh, check=True)
            if tar.wait() != 0:
                raise RuntimeError("tar failed")
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.pack_triton",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    for tool in ("strip", "xz", "tar"):
        if shutil.which(tool) is None:
            print(f"pack_triton: needs {tool!r} on PATH", file=sys.stderr)
            return 2
    if not args.wheel.is_file():
        print(f"pack_triton: no wheel at {args.wheel}", file=sys.stderr)
        return 2
    size = pack(args.wheel, args.out)
    print(f"wrote {args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
