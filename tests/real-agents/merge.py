#!/usr/bin/env python3
"""Merges the real.toml of other capture runs (OUT=dir capture.sh ...) into a fixture tree:
copies their screens and manifest entries.   merge.py DEST SRC [SRC...]"""

import os
import shutil
import sys

import manifest


def main():
    dest, sources = sys.argv[1], sys.argv[2:]
    entries = manifest.read(os.path.join(dest, "real.toml"))
    for src in sources:
        for key, entry in manifest.read(os.path.join(src, "real.toml")).items():
            if not os.path.exists(os.path.join(src, key)):
                continue
            stem = os.path.join(src, key)[: -len(".txt")]
            for ext in (".txt", ".ansi"):
                if os.path.exists(stem + ext):
                    shutil.copy(stem + ext, os.path.join(dest, key[: -len(".txt")] + ext))
            entries[key] = entry
    manifest.write(os.path.join(dest, "real.toml"), entries, dest)


if __name__ == "__main__":
    main()
