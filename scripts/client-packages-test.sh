#!/usr/bin/env bash
# scripts/client-packages-test.sh: the client packages of scripts/client-packages.sh, each
# checked for complete metadata and tested as a user installs it, never from clients/ (part of
# `make test-packages`). A scratch cluster of PG_BINDIR (the extension installed there, as for
# the other client suites) on port_of packages; the Express tests on http_port_of packages.
#
#   Python      the wheel and the sdist's metadata (license, description, readme, versions,
#               classifiers, keywords, project URLs, py.typed, LICENSE); a fresh venv with the
#               wheel and the test requirements (clients/python/requirements-dev.txt) installed;
#               clients/python/tests copied elsewhere and run there with `python -P` (no src/,
#               no cwd on sys.path: `idempotency` must come from site-packages, which is
#               checked); the ASGI and Django layers included.
#   TypeScript  the tarball's files and package.json (types, both ESM and CJS conditions on
#               every entry point, license, repository, keywords, engines); a fresh npm project
#               that installs the tarball and the client's devDependencies from the registry;
#               clients/typescript/test copied there with its imports of ../src/NAME turned
#               into the package's entry points, compiled by tsc against the installed .d.ts
#               and run; an ESM script that imports every entry point and checks that it is the
#               very module `require` gives; an .mts example type-checked against the .d.mts.
#   Rust        the .crate's manifest (description, license, repository, readme, keywords,
#               categories, rust-version); the .crate unpacked outside the workspace and its own
#               tests (with the database ones) built and run from it, --locked to its Cargo.lock.
set -euo pipefail
NAME=client-packages-test
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed

dist=$(bash scripts/client-packages.sh)
base=$ROOT/build/packages/clients
dir=$base/pg
port=$(port_of packages)
http_port=$(http_port_of packages)
cluster_fresh "$dir" "$port"
py_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' clients/python/pyproject.toml | head -n1)
py_dist=$(python3 -c 'import re, tomllib; print(re.sub(r"[-_.]+", "_", tomllib.load(open("clients/python/pyproject.toml", "rb"))["project"]["name"]).lower())')
ts_version=$(python3 -c 'import json; print(json.load(open("clients/typescript/package.json"))["version"])')
rs_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' clients/rust/Cargo.toml | head -n1)

# --- Python ------------------------------------------------------------------------------
whl=$dist/$py_dist-$py_version-py3-none-any.whl
sdist=$dist/$py_dist-$py_version.tar.gz
[ -f "$whl" ] && [ -f "$sdist" ] || die "no wheel or sdist of $py_version in $dist: $(ls "$dist")"
python3 - "$whl" "$sdist" "$ROOT/LICENSE" <<'EOF'
import email, sys, tarfile, zipfile
whl, sdist, license_path = sys.argv[1:]
problems = []
with zipfile.ZipFile(whl) as z:
    names = z.namelist()
    meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    lic = [n for n in names if "/licenses/" in n and n.endswith("LICENSE")]
    if not lic or z.read(lic[0]) != open(license_path, "rb").read():
        problems.append("the wheel's LICENSE is missing or not the repository's")
    for need in ("idempotency/__init__.py", "idempotency/py.typed"):
        if need not in names:
            problems.append(f"the wheel has no {need}")
    if any(n.startswith("tests/") for n in names):
        problems.append("the wheel ships the tests")
for field in ("Name", "Version", "Summary", "License-Expression", "Requires-Python", "Keywords",
              "Description-Content-Type", "Project-URL", "Classifier", "Requires-Dist"):
    if not meta.get_all(field):
        problems.append(f"METADATA has no {field}")
if meta.get("License-Expression") != "PostgreSQL":
    problems.append(f"License-Expression is {meta.get('License-Expression')!r}")
urls = {u.split(",")[0].strip().lower() for u in meta.get_all("Project-URL") or []}
for u in ("repository", "changelog", "documentation"):
    if u not in urls:
        problems.append(f"no Project-URL {u}")
classifiers = meta.get_all("Classifier") or []
for c in ("Typing :: Typed", "Programming Language :: Python :: 3 :: Only", "Topic :: Database"):
    if c not in classifiers:
        problems.append(f"no classifier {c!r}")
if len(meta.get_payload() or "") < 200:
    problems.append("the long description (README) is missing")
with tarfile.open(sdist) as t:
    top = t.getnames()[0].split("/")[0]
    for need in ("PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "src/idempotency/__init__.py"):
        if f"{top}/{need}" not in t.getnames():
            problems.append(f"the sdist has no {need}")
if problems:
    sys.exit("Python package metadata:\n  " + "\n  ".join(problems))
print(f"python metadata: {meta['Name']} {meta['Version']}, {len(classifiers)} classifiers, Requires-Python {meta['Requires-Python']}")
EOF
venv=$base/venv
log "a fresh venv with the wheel and the test requirements"
python3 -m venv --clear "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$whl" -r clients/python/requirements-dev.txt >&2
rm -rf "$base/py-tests"
cp -r clients/python/tests "$base/py-tests"
find "$base/py-tests" -name __pycache__ -prune -exec rm -rf {} +
where=$(cd "$base/py-tests" && "$venv/bin/python" -P -c 'import idempotency; print(idempotency.__file__)')
case "$where" in "$venv"/lib/python*/site-packages/idempotency/__init__.py) ;;
  *) die "idempotency was imported from $where, not from the venv's site-packages" ;; esac
log "pytest on a copy of clients/python/tests, the installed wheel ($where)"
(cd "$base/py-tests" && IDEM_TEST_PGHOST=$dir IDEM_TEST_PGPORT=$port \
  "$venv/bin/python" -P -m pytest -q -p no:cacheprovider --rootdir "$base/py-tests" .) >&2

# --- TypeScript --------------------------------------------------------------------------
tgz=$dist/idempotency-client-$ts_version.tgz
[ -f "$tgz" ] || die "no $tgz"
node - "$tgz" "$ROOT/LICENSE" <<'EOF'
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const [tgz, licensePath] = process.argv.slice(2)
const files = execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).trim().split('\n')
const pkg = JSON.parse(execFileSync('tar', ['-xzOf', tgz, 'package/package.json'], { encoding: 'utf8' }))
const license = execFileSync('tar', ['-xzOf', tgz, 'package/LICENSE'])
const problems = []
if (!license.equals(fs.readFileSync(licensePath))) problems.push("the tarball's LICENSE is not the repository's")
for (const f of ['package/README.md', 'package/dist/src/index.js', 'package/dist/src/index.d.ts', 'package/dist/esm/index.mjs', 'package/dist/esm/index.d.mts'])
  if (!files.includes(f)) problems.push(`no ${f}`)
if (files.some((f) => f.startsWith('package/dist/test/') || f.startsWith('package/src/'))) problems.push('the tests or the TypeScript sources are packed')
for (const k of ['description', 'license', 'repository', 'homepage', 'bugs', 'keywords', 'engines', 'types', 'main', 'exports'])
  if (pkg[k] === undefined) problems.push(`package.json has no ${k}`)
if (pkg.license !== 'PostgreSQL') problems.push(`license is ${pkg.license}`)
for (const [sub, c] of Object.entries(pkg.exports ?? {})) {
  for (const cond of ['import', 'require'])
    for (const k of ['types', 'default']) {
      const f = c?.[cond]?.[k]
      if (!f) problems.push(`exports["${sub}"].${cond}.${k} is missing`)
      else if (!files.includes('package/' + f.replace(/^\.\//, ''))) problems.push(`exports["${sub}"].${cond}.${k}: ${f} is not in the tarball`)
    }
}
if (problems.length) { console.error('npm package:\n  ' + problems.join('\n  ')); process.exit(1) }
console.log(`npm metadata: ${pkg.name} ${pkg.version}, ${Object.keys(pkg.exports).length} entry points, ${files.length} files`)
EOF
project=$base/ts-project
rm -rf "$project"
mkdir -p "$project/test"
cat >"$project/package.json" <<'EOF'
{ "name": "idempotency-client-installed-test", "version": "0.0.0", "private": true, "type": "commonjs" }
EOF
mapfile -t devdeps < <(node -e 'const d = require("./clients/typescript/package.json").devDependencies || {};
  for (const [n, v] of Object.entries(d)) console.log(`${n}@${v}`)')
log "npm install of the tarball and the client's devDependencies into a fresh project"
(cd "$project" && npm install --no-audit --no-fund --loglevel=error "$tgz" "${devdeps[@]}") >&2
pkgname=$(node -p 'require("./clients/typescript/package.json").name')
subpaths=$(node -p 'Object.keys(require("./clients/typescript/package.json").exports).join(" ")')
# A test file whose ../src imports are all public entry points is copied with them turned into
# the package's (../src/index -> the package, ../src/NAME -> its ./NAME entry point). One that
# imports a module the package does not export (a unit test of internals: layer.ts) cannot run
# against the installed package: it is left out here, named, and `make test-client-typescript`
# runs it from the source. The tests of the public API must remain.
kept=() skipped=()
for f in clients/typescript/test/*.ts; do
  private=
  for m in $(grep -ho "from ['\"]\.\./src/[a-z0-9_-]*['\"]" "$f" | sed -E "s#.*\.\./src/([a-z0-9_-]+).*#\1#" | sort -u); do
    [ "$m" = index ] && continue
    case " $subpaths " in *" ./$m "*) ;; *) private="$private $m" ;; esac
  done
  if [ -n "$private" ]; then
    skipped+=("$(basename "$f") (imports ../src/:${private# })")
    continue
  fi
  sed -E "s#(['\"])\.\./src/index(['\"])#\1$pkgname\2#; s#(['\"])\.\./src/([a-z0-9_-]+)(['\"])#\1$pkgname/\2\3#" \
    "$f" >"$project/test/$(basename "$f")"
  case "$f" in *.test.ts) kept+=("$(basename "$f")") ;; esac
done
[ ${#skipped[@]} -eq 0 ] || log "left out, not public entry points: ${skipped[*]}"
for t in client.test.ts http.test.ts express.test.ts; do
  case " ${kept[*]} " in *" $t "*) ;; *) die "$t, a test of the public API, was left out" ;; esac
done
log "${#kept[@]} test files against the installed package: ${kept[*]}"
! grep -n "\.\./src/" "$project"/test/*.ts || die "a test still imports from ../src"
cat >"$project/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "target": "ES2022", "module": "node16", "moduleResolution": "node16", "strict": true,
    "outDir": "dist", "rootDir": ".", "esModuleInterop": true, "skipLibCheck": false, "types": ["node"]
  },
  "include": ["test", "example.mts"]
}
EOF
# An ESM user's code, type-checked against the .d.mts of every entry point.
{
  echo "import * as client from '$pkgname'"
  echo "import { http, IdempotencyError, transaction } from '$pkgname'"
  for sub in $subpaths; do
    [ "$sub" = . ] || echo "import * as entry_${sub#./} from '$pkgname/${sub#./}'"
  done
  echo "const problem: Record<string, unknown> = http.problem(409, http.code.REQUEST_IN_PROGRESS, 'held')"
  echo "const key: string = http.parseIdempotencyKey('\"k1\"')"
  echo "const run: typeof transaction = client.transaction"
  echo "const err: typeof IdempotencyError = client.IdempotencyError"
  echo "export const used = [problem, key, run, err$(for sub in $subpaths; do [ "$sub" = . ] || printf ', entry_%s' "${sub#./}"; done)]"
} >"$project/example.mts"
log "tsc: the tests and an ESM example against the installed declarations"
(cd "$project" && npx --no-install tsc -p tsconfig.json) >&2
cat >"$project/esm-smoke.mjs" <<EOF
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
let n = 0
for (const sub of '$subpaths'.split(' ')) {
  const spec = sub === '.' ? '$pkgname' : '$pkgname/' + sub.slice(2)
  const esm = await import(spec)
  const cjs = require(spec)
  const names = Object.keys(cjs).filter((k) => k !== 'default' && k !== '__esModule')
  if (names.length === 0) throw new Error(spec + ': no exports')
  for (const k of names) {
    if (esm[k] !== cjs[k]) throw new Error(spec + ': the ESM export ' + k + ' is not the CJS one')
    n++
  }
}
console.log('esm-smoke: ' + n + ' exports of ' + '$subpaths'.split(' ').length + ' entry points, the same objects through import and require')
EOF
(cd "$project" && node esm-smoke.mjs) >&2
log "node --test on the tests compiled against the installed package"
(cd "$project" && IDEM_TEST_PGHOST=$dir IDEM_TEST_PGPORT=$port IDEM_TEST_HTTP_PORT=$http_port \
  node --test --test-concurrency=1 dist/test/*.test.js) >&2

# --- Rust --------------------------------------------------------------------------------
crate=$dist/idempotency-client-$rs_version.crate
[ -f "$crate" ] || die "no $crate"
crate_dir=$(mktemp -d /tmp/idempotency-crate.XXXXXX)
on_exit rm -rf "$crate_dir"
tar -xzf "$crate" -C "$crate_dir"
src=$crate_dir/idempotency-client-$rs_version
python3 - "$src/Cargo.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["package"]
missing = [k for k in ("description", "license", "repository", "readme", "keywords", "categories", "rust-version", "homepage") if not p.get(k)]
if missing:
    sys.exit(f"the .crate's Cargo.toml lacks {', '.join(missing)}")
print(f"crate metadata: {p['name']} {p['version']}, license {p['license']}, rust-version {p['rust-version']}")
EOF
cmp -s "$src/LICENSE" LICENSE || die "the .crate's LICENSE is missing or not the repository's"
sql "$dir" "$port" postgres "CREATE DATABASE client_tests" >/dev/null
log "cargo test --features db-tests in the unpacked .crate ($src)"
(cd "$src" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} \
  IDEMPOTENCY_TEST_DATABASE_URL="postgresql://postgres@localhost/client_tests?host=$dir&port=$port" \
  cargo test --locked --features db-tests) >"$base/cargo-test.log" 2>&1 \
  || { tail -n 40 "$base/cargo-test.log" >&2; die "the .crate's tests failed"; }
grep -E '^test result:' "$base/cargo-test.log" >&2
log "passed: the wheel, the sdist, the npm tarball and the .crate, each tested as installed"
