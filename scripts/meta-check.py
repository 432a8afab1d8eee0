#!/usr/bin/env python3
"""Checks META.json (the PGXN distribution metadata) against the PGXN Meta Spec v1.0.0's
rules for the fields this distribution uses, and checks that it agrees with the repository:
its version equals Cargo.toml's [package] version, and the files it names exist.

    python3 scripts/meta-check.py [META.json]     exit 0 when valid, 1 with the reasons
    python3 scripts/meta-check.py --self-test     also shows the checker rejects broken copies

Run by `make test-meta` (part of `make test`). Standard library only (Python 3.11 tomllib).
"""
import copy
import json
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Spec 1.0.0, "Version Format": Semantic Versioning 1.0.0 (major.minor.patch[prerelease]).
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)([A-Za-z][0-9A-Za-z-]*)?$")
# Spec 1.0.0, "Version Ranges": 0, a version, or comma-separated operator+version clauses.
RANGE_CLAUSE = re.compile(r"^\s*(?:(?:>=|<=|==|!=|>|<)\s*)?(\S+)\s*$")
# Spec 1.0.0, "license": the strings it defines.
LICENSES = {
    "agpl_3", "apache_1_1", "apache_2_0", "artistic_1", "artistic_2", "bsd", "freebsd",
    "gfdl_1_2", "gfdl_1_3", "gpl_1", "gpl_2", "gpl_3", "lgpl_2_1", "lgpl_3_0", "mit",
    "mozilla_1_0", "mozilla_1_1", "openssl", "perl_5", "postgresql", "qpl_1_0", "ssleay",
    "sun", "zlib", "open_source", "restricted", "unrestricted", "unknown",
}
PHASES = {"configure", "build", "runtime", "test", "develop"}
RELATIONS = {"requires", "recommends", "suggests", "conflicts"}
STATUSES = {"stable", "testing", "unstable"}


def is_range(v):
    if v == 0 or v == "0":
        return True
    if not isinstance(v, str) or not v.strip():
        return False
    for clause in v.split(","):
        m = RANGE_CLAUSE.match(clause)
        if not m or not (SEMVER.match(m.group(1)) or m.group(1) == "0"):
            return False
    return True


def check(meta, root=ROOT):
    errs = []
    req = ["name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"]
    for k in req:
        if k not in meta:
            errs.append(f"missing required field {k!r}")
    if errs:
        return errs

    ms = meta["meta-spec"]
    if not isinstance(ms, dict) or ms.get("version") != "1.0.0":
        errs.append("meta-spec.version must be \"1.0.0\"")
    name = meta["name"]
    if not isinstance(name, str) or len(name) < 2 or re.search(r"[/\\\x00-\x1f\s]", name):
        errs.append(f"name {name!r}: at least 2 characters, no slash, backslash, space or control")
    if not isinstance(meta["abstract"], str) or not meta["abstract"].strip():
        errs.append("abstract must be a non-empty string")
    if not isinstance(meta["version"], str) or not SEMVER.match(meta["version"]):
        errs.append(f"version {meta['version']!r} is not a semantic version")
    m = meta["maintainer"]
    if isinstance(m, str):
        m = [m]
    if not isinstance(m, list) or not m or not all(isinstance(x, str) and x.strip() for x in m):
        errs.append("maintainer must be a non-empty string or list of non-empty strings")
    lic = meta["license"]
    names = [lic] if isinstance(lic, str) else lic if isinstance(lic, list) else None
    if isinstance(lic, dict):
        if not lic or not all(isinstance(v, str) and v for v in lic.values()):
            errs.append("license object must map names to URLs")
    elif not names or not all(n in LICENSES for n in names):
        errs.append(f"license {lic!r} is not one of the spec's license strings")

    prov = meta["provides"]
    if not isinstance(prov, dict) or not prov:
        errs.append("provides must be a non-empty object")
        prov = {}
    for ext, p in prov.items():
        if not isinstance(p, dict):
            errs.append(f"provides.{ext} must be an object")
            continue
        for k in ("file", "version"):
            if k not in p:
                errs.append(f"provides.{ext} is missing {k!r}")
        if "version" in p and not (isinstance(p["version"], str) and SEMVER.match(p["version"])):
            errs.append(f"provides.{ext}.version {p['version']!r} is not a semantic version")
        for k in ("file", "docfile"):
            if k in p and not os.path.isfile(os.path.join(root, p[k])):
                errs.append(f"provides.{ext}.{k}: no file {p[k]!r} in the repository")

    for phase, rels in meta.get("prereqs", {}).items():
        if phase not in PHASES:
            errs.append(f"prereqs: unknown phase {phase!r}")
            continue
        for rel, deps in rels.items():
            if rel not in RELATIONS:
                errs.append(f"prereqs.{phase}: unknown relation {rel!r}")
                continue
            for dep, ver in deps.items():
                if not is_range(ver):
                    errs.append(f"prereqs.{phase}.{rel}.{dep}: {ver!r} is not a version range")
    if "release_status" in meta and meta["release_status"] not in STATUSES:
        errs.append(f"release_status must be one of {sorted(STATUSES)}")
    if "tags" in meta and not (isinstance(meta["tags"], list)
                               and all(isinstance(t, str) and 0 < len(t) <= 255 for t in meta["tags"])):
        errs.append("tags must be a list of strings of 1..255 characters")
    if "resources" in meta:
        for k, v in meta["resources"].items():
            if k not in ("homepage", "bugtracker", "repository") and not k.startswith("x_"):
                errs.append(f"resources: unknown key {k!r}")

    # Agreement with the repository.
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        cargo_version = tomllib.load(f)["package"]["version"]
    if meta["version"] != cargo_version:
        errs.append(f"version {meta['version']!r} differs from Cargo.toml's {cargo_version!r}")
    ours = prov.get("idempotency")
    if ours is None:
        errs.append("provides has no 'idempotency' extension")
    elif ours.get("version") != cargo_version:
        errs.append(f"provides.idempotency.version {ours.get('version')!r} differs from Cargo.toml's {cargo_version!r}")
    pg = meta.get("prereqs", {}).get("runtime", {}).get("requires", {}).get("PostgreSQL")
    if pg is None:
        errs.append("prereqs.runtime.requires.PostgreSQL is missing")
    return errs


def self_test(meta):
    """Each broken copy must be rejected, else the checker itself is broken."""
    def without(k):
        m = copy.deepcopy(meta); del m[k]; return m
    def with_(path, v):
        m = copy.deepcopy(meta); d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = v; return m
    cases = {f"no {k}": without(k) for k in
             ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec")}
    cases.update({
        "version not Cargo.toml's": with_(["version"], "9.9.9"),
        "version not semver": with_(["version"], "0.1"),
        "provides version mismatch": with_(["provides", "idempotency", "version"], "0.0.1"),
        "missing file": with_(["provides", "idempotency", "file"], "sql/nope.sql"),
        "bad license": with_(["license"], "PostgreSQL License"),
        "bad meta-spec": with_(["meta-spec", "version"], "2.0.0"),
        "bad prereq": with_(["prereqs", "runtime", "requires", "PostgreSQL"], "thirteen"),
        "empty maintainer": with_(["maintainer"], []),
    })
    bad = [name for name, m in cases.items() if not check(m)]
    if bad:
        print("meta-check self-test: these broken copies were accepted: " + ", ".join(bad))
        return 1
    print(f"meta-check self-test: {len(cases)} broken copies rejected")
    return 0


def main(argv):
    args = [a for a in argv if a != "--self-test"]
    path = args[0] if args else os.path.join(ROOT, "META.json")
    with open(path) as f:
        meta = json.load(f)
    errs = check(meta)
    for e in errs:
        print(f"{path}: {e}")
    if errs:
        return 1
    print(f"{path}: valid PGXN Meta Spec 1.0.0, version {meta['version']} = Cargo.toml")
    if "--self-test" in argv:
        return self_test(meta)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
