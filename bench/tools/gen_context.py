#!/usr/bin/env python3
"""Write a deterministic build context for the COPY benchmarks.

    gen_context.py --out DIR --files N --bytes TOTAL

DIR gets a Dockerfile (`FROM busybox:latest` / `COPY . /data/`) and N
files of TOTAL/N bytes each (the remainder spread over the first ones),
100 files per directory (d0000/f000000.bin ...). Contents come from a PRNG
seeded with the file's index, so they are incompressible and identical
from one machine to the next. A stamp beside DIR (DIR.stamp) records the
parameters; a DIR whose stamp matches is left alone, so the second call
costs nothing and file metadata (mtime, inode) stays as the first call
left it. Stdlib only.
"""

import argparse
import os
import random
import shutil
import sys

FILES_PER_DIR = 100
DOCKERFILE = "FROM busybox:latest\nCOPY . /data/\n"
VERSION = 1


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b").rstrip("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", type=int, required=True)
    ap.add_argument("--bytes", required=True, help="total size, e.g. 200M, 2G")
    args = ap.parse_args()
    total = parse_size(args.bytes)
    if args.files < 1 or total < 0:
        ap.error("--files must be >= 1 and --bytes >= 0")

    out = os.path.abspath(args.out)
    stamp_path = out + ".stamp"
    stamp = f"v{VERSION} files={args.files} bytes={total}\n"
    try:
        with open(stamp_path, encoding="utf-8") as f:
            if f.read() == stamp and os.path.isdir(out):
                return 0
    except FileNotFoundError:
        pass

    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "Dockerfile"), "w", encoding="utf-8") as f:
        f.write(DOCKERFILE)
    base, extra = divmod(total, args.files)
    for i in range(args.files):
        d = os.path.join(tmp, f"d{i // FILES_PER_DIR:04d}")
        if i % FILES_PER_DIR == 0:
            os.mkdir(d)
        size = base + (1 if i < extra else 0)
        rng = random.Random(i)
        with open(os.path.join(d, f"f{i:06d}.bin"), "wb") as f:
            left = size
            while left > 0:
                n = min(left, 8 << 20)
                f.write(rng.randbytes(n))
                left -= n
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    with open(stamp_path, "w", encoding="utf-8") as f:
        f.write(stamp)
    print(f"gen_context: {out}: {args.files} files, {total} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
