#!/usr/bin/env python3
"""Every artifact of a release carries the same version: the extension's, Cargo.toml's
[package] version (which cargo-pgrx writes into idempotency.control as default_version).

    python3 scripts/version-check.py [--root DIR] [--tag vX.Y.Z]   exit 0 when they agree, 1 with the reasons
    python3 scripts/version-check.py --self-test                   also shows that each disagreement is caught

What is compared with Cargo.toml's version:
    idempotency.control      default_version is '@CARGO_VERSION@' (filled from Cargo.toml) or that version
    META.json                version, and provides.idempotency.version (the PGXN distribution)
    packaging/deb/changelog  the upstream part of the top entry's version (the Debian packages)
    CHANGELOG.md             the first release heading, "## X.Y.Z ..."
    clients/python/pyproject.toml        [project] version (sdist and wheel)
    clients/typescript/package.json      version (the npm tarball), and package-lock.json's
    clients/rust/Cargo.toml              [package] version (the .crate)
With --tag (docs/releasing.md: a release is made from its tag), the tag must be v<version>.

Run by `make test-packages` (part of `make test`), with --self-test. Standard library only
(Python 3.11 tomllib).
"""
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILES = [
    "Cargo.toml", "idempotency.control", "META.json", "packaging/deb/changelog", "CHANGELOG.md",
    "clients/python/pyproject.toml", "clients/typescript/package.json",
    "clients/typescript/package-lock.json", "clients/rust/Cargo.toml",
]


def read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def versions(root):
    """(what, version found) for every place that names the release's version."""
    out = []
    control = re.search(r"^default_version\s*=\s*'([^']*)'", read(root, "idempotency.control"), re.M)
    out.append(("idempotency.control default_version", control.group(1) if control else None))
    meta = json.loads(read(root, "META.json"))
    out.append(("META.json version", meta.get("version")))
    out.append(("META.json provides.idempotency.version",
                meta.get("provides", {}).get("idempotency", {}).get("version")))
    top = re.match(r"^\S+ \(([^)]*)\)", read(root, "packaging/deb/changelog"))
    out.append(("packaging/deb/changelog top entry (upstream part)",
                top.group(1).rsplit("-", 1)[0] if top else None))
    heading = re.search(r"^## (\S+)", read(root, "CHANGELOG.md"), re.M)
    out.append(("CHANGELOG.md first release heading", heading.group(1) if heading else None))
    py = tomllib.loads(read(root, "clients/python/pyproject.toml"))
    out.append(("clients/python/pyproject.toml [project] version", py.get("project", {}).get("version")))
    pkg = json.loads(read(root, "clients/typescript/package.json"))
    out.append(("clients/typescript/package.json version", pkg.get("version")))
    lock = json.loads(read(root, "clients/typescript/package-lock.json"))
    out.append(("clients/typescript/package-lock.json version", lock.get("version")))
    out.append(("clients/typescript/package-lock.json packages[''].version",
                lock.get("packages", {}).get("", {}).get("version")))
    rs = tomllib.loads(read(root, "clients/rust/Cargo.toml"))
    out.append(("clients/rust/Cargo.toml [package] version", rs.get("package", {}).get("version")))
    return out


def check(root, tag=None):
    errs = []
    try:
        want = tomllib.loads(read(root, "Cargo.toml"))["package"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        return None, [f"Cargo.toml: no [package] version ({e})"]
    try:
        found = versions(root)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        return want, [f"cannot read a version: {e}"]
    for what, got in found:
        if what.startswith("idempotency.control") and got == "@CARGO_VERSION@":
            continue
        if got != want:
            errs.append(f"{what} is {got!r}, Cargo.toml's version is {want!r}")
    if tag is not None and tag != f"v{want}":
        errs.append(f"the tag {tag!r} is not v{want}")
    return want, errs


def self_test():
    """Each file made to disagree in a copy of the tree must be caught, naming that file."""
    want, errs = check(ROOT)
    if errs:
        print("version-check self-test: the tree itself disagrees; fix that first")
        return 1
    bad_version = "9.9.9"
    # (name, file, a function that breaks the file's text)
    def sub(pattern, repl, count=1):
        return lambda s: re.sub(pattern, repl, s, count=count, flags=re.M)
    cases = [
        ("control", "idempotency.control", sub(r"^default_version\s*=.*$", f"default_version = '{bad_version}'")),
        ("META.json", "META.json", sub(r'"version": "' + re.escape(want) + '"', f'"version": "{bad_version}"')),
        ("META.json provides", "META.json",
         lambda s: re.sub(r'("version": "' + re.escape(want) + r'")(?![\s\S]*"version": "' + re.escape(want) + '")',
                          f'"version": "{bad_version}"', s)),
        ("Debian changelog", "packaging/deb/changelog", sub(r"\(" + re.escape(want) + "-", f"({bad_version}-")),
        ("CHANGELOG.md", "CHANGELOG.md", sub(r"^## " + re.escape(want), f"## {bad_version}")),
        ("pyproject", "clients/python/pyproject.toml", sub(r'^version = ".*"', f'version = "{bad_version}"')),
        ("package.json", "clients/typescript/package.json", sub(r'"version": ".*"', f'"version": "{bad_version}"')),
        ("package-lock.json", "clients/typescript/package-lock.json",
         sub(r'"version": ".*"', f'"version": "{bad_version}"')),
        ("Rust client", "clients/rust/Cargo.toml", sub(r'^version = ".*"', f'version = "{bad_version}"')),
        ("Cargo.toml alone", "Cargo.toml", sub(r'^version = ".*"', f'version = "{bad_version}"')),
    ]
    failed = []
    for name, rel, breaker in cases:
        with tempfile.TemporaryDirectory() as tmp:
            for f in FILES:
                os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
                shutil.copy(os.path.join(ROOT, f), os.path.join(tmp, f))
            before = read(tmp, rel)
            after = breaker(before)
            if after == before:
                failed.append(f"{name} (the breaker changed nothing)")
                continue
            with open(os.path.join(tmp, rel), "w", encoding="utf-8") as f:
                f.write(after)
            _, errs = check(tmp)
            if not errs:
                failed.append(f"{name} (accepted)")
    _, errs = check(ROOT, tag="v0.0.0-not-it")
    if not errs:
        failed.append("a wrong tag (accepted)")
    if failed:
        print("version-check self-test: these disagreements were not caught: " + ", ".join(failed))
        return 1
    print(f"version-check self-test: {len(cases) + 1} disagreements caught")
    return 0


def main(argv):
    root, tag = ROOT, None
    args = list(argv)
    if "--root" in args:
        i = args.index("--root"); root = args[i + 1]; del args[i:i + 2]
    if "--tag" in args:
        i = args.index("--tag"); tag = args[i + 1]; del args[i:i + 2]
    want, errs = check(root, tag)
    for e in errs:
        print(f"version-check: {e}")
    if errs:
        return 1
    print(f"version-check: every artifact's version is {want}" + (f", the tag {tag}" if tag else ""))
    if "--self-test" in args:
        return self_test()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
