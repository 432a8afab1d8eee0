// Prints number vectors from a real ECMAScript engine for tests/number_vectors.rs:
//
//   <x.toExponential()>\t<String(x)>
//
// toExponential() without an argument gives the shortest digits that round-trip, the same
// digits String(x) lays out, so the first column is the exact decimal that a jsonb numeric
// would hold and the second is RFC 8785's (ECMAScript's) text for it. Deterministic: rerun
// with `node gen_numbers.js > numbers.tsv` and the file must not change.
'use strict';

const out = [];
const seen = new Set();
function add(x) {
  if (!Number.isFinite(x)) return;
  const key = Object.is(x, -0) ? '-0' : String(x);
  if (seen.has(key)) return;
  seen.add(key);
  out.push(`${x.toExponential()}\t${String(x)}`);
}
function addBoth(x) {
  add(x);
  add(-x);
}

const f64 = new Float64Array(1);
const u64 = new BigUint64Array(f64.buffer);
function fromBits(bits) {
  u64[0] = BigInt.asUintN(64, bits);
  return f64[0];
}
function bitsOf(x) {
  f64[0] = x;
  return u64[0];
}
function nextUp(x) {
  return x >= 0 ? fromBits(bitsOf(x) + 1n) : fromBits(bitsOf(x) - 1n);
}
function nextDown(x) {
  return x > 0 ? fromBits(bitsOf(x) - 1n) : fromBits(bitsOf(x) + 1n);
}

// xorshift64*: reproducible without Math.random.
let state = 0x9e3779b97f4a7c15n;
function rand64() {
  state ^= state >> 12n;
  state ^= BigInt.asUintN(64, state << 25n);
  state ^= state >> 27n;
  return BigInt.asUintN(64, state * 0x2545f4914f6cdd1dn);
}

// Zeros and the ends of the range.
add(0);
add(-0);
addBoth(Number.MIN_VALUE);
addBoth(Number.MAX_VALUE);
addBoth(Number.EPSILON);
addBoth(Number.MAX_SAFE_INTEGER);

// Powers of ten and their neighbours, densest around the layout boundaries 1e-7..1e21.
for (let e = -325; e <= 308; e++) {
  const p = Number(`1e${e}`);
  addBoth(p);
  if (e >= -9 && e <= 23) {
    let lo = p;
    let hi = p;
    for (let i = 0; i < 4; i++) {
      lo = nextDown(lo);
      hi = nextUp(hi);
      addBoth(lo);
      addBoth(hi);
    }
    for (const m of [1.5, 2, 5, 9, 9.5, 9.99, 1.2345678901234567, 3.3333333333333335]) {
      addBoth(Number(`${m}e${e}`));
    }
  }
}

// Integers near 2^53, where doubles stop being exact integers.
for (let i = -40; i <= 40; i++) {
  addBoth(Number(2n ** 53n + BigInt(i)));
  addBoth(Number(2n ** 54n + BigInt(i * 3)));
}
for (let i = 0; i < 60; i++) {
  addBoth(Number(BigInt.asUintN(64, rand64()) >> BigInt(i)));
}

// Subnormals: the smallest, the largest, and random ones.
addBoth(fromBits(0x000fffffffffffffn));
for (let i = 1n; i <= 20n; i++) addBoth(fromBits(i));
for (let i = 0; i < 200; i++) addBoth(fromBits(rand64() & 0x000fffffffffffffn));

// Short decimals, as people write them, at every scale.
for (let i = 0; i < 600; i++) {
  const digits = Number(rand64() % 1000000n);
  const e = Number(rand64() % 60n) - 30;
  addBoth(Number(`${digits}e${e}`));
}

// Random bit patterns (NaN and infinities are skipped by add).
for (let i = 0; i < 1500; i++) {
  add(fromBits(rand64()));
}

process.stdout.write(out.join('\n') + '\n');
