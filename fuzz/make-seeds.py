#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/seeds/<target>/ (rerun: python3 fuzz/make-seeds.py).

- jsonb_bytes: every jsonb datum in core/tests/vectors/jsonb_pg15.tsv (bytes that
  PostgreSQL 15 stored, read off its pages), so the fuzzer starts from real layouts.
- numeric: the numeric varlena inside each raw-scalar number of that file, and a few
  short byte patterns that steer the structured half towards exponents and zeros.
- model_roundtrip: the UTF-8 of JSON commands from the frozen vectors and fixed
  pseudo-random bytes (the target reads its input as choices, so any bytes are a value).
Deterministic: rerunning must not change the files.
"""
import hashlib
import os
import random
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def write(target, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


shutil.rmtree(SEEDS, ignore_errors=True)
with open(os.path.join(ROOT, "core/tests/vectors/jsonb_pg15.tsv"), encoding="utf-8") as f:
    for line in f:
        text, stored = line.rstrip("\n").split("\t")
        datum = bytes.fromhex(stored)
        write("jsonb_bytes", datum)
        # A raw scalar number: header, one numeric JEntry, the numeric at offset 8.
        if datum[:4] == bytes.fromhex("01000050") and datum[7] & 0x70 == 0x10:
            write("numeric", datum[8:])

with open(os.path.join(ROOT, "core/tests/vectors/fingerprints-v1.tsv"), encoding="utf-8") as f:
    commands = [line.split("\t")[0] for line in f if not line.startswith("#")]
for command in commands[::8]:
    write("model_roundtrip", command.encode("utf-8"))

rng = random.Random(8785)
for n in (4, 16, 64, 256, 1024):
    write("model_roundtrip", bytes(rng.randrange(256) for _ in range(n)))
    write("numeric", bytes(rng.randrange(256) for _ in range(min(n, 64))))
for pattern in (b"\x00" * 8, b"\xff" * 8, b"\x01\x02\x03\x04\x05\x06\x07\x08", b"0.000e-400"):
    write("numeric", pattern)
