// Writes fingerprints-v1.tsv, the frozen fingerprint vectors, from an implementation of the
// canonical form that shares no code with the Rust core:
//
//   node --harmony-json-parse-with-source gen_fingerprints.js > fingerprints-v1.tsv
//
// (Node 20; the flag lets JSON.parse's reviver see each number's source text, so numbers
// are never rounded through a double.) Deterministic: rerunning it must not change the file.
//
// Each row is `command <TAB> canonical <TAB> sha256-hex`:
// - command: JSON text as a client sends it (spaces allowed, never a tab or a newline);
// - canonical: what idem_canonical(command::jsonb) must return: RFC 8785 structure built
//   from ECMAScript itself (JSON.parse keeps the last of duplicate keys, as jsonb does;
//   Array.prototype.sort orders keys by UTF-16 code units; JSON.stringify escapes strings),
//   and numbers as their exact decimal value in the layout of ECMAScript's Number::toString;
// - sha256-hex: SHA-256 of the canonical text's UTF-8 bytes, from node's crypto.
'use strict';

const crypto = require('crypto');

if (!JSON.parse('1.0', (k, v, ctx) => ctx && ctx.source)) {
  throw new Error('run with node --harmony-json-parse-with-source (Node 20)');
}

// ---------------------------------------------------------------------------------------
// Numbers: exact decimal, laid out as ECMAScript lays out a Number.

class Num {
  constructor(source) {
    this.source = source;
  }
}

// The exact value of a JSON number spelling as {negative, digits, n}: ±0.digits × 10^n,
// digits without leading or trailing zeros ('' for zero, which is never negative).
function exactDecimal(spelling) {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(spelling);
  if (!m) throw new Error(`not a JSON number: ${spelling}`);
  const [, sign, int, frac = '', exp = '0'] = m;
  let all = int + frac;
  let n = int.length + Number(exp);
  const lead = all.length - all.replace(/^0+/, '').length;
  all = all.slice(lead);
  n -= lead;
  const digits = all.replace(/0+$/, '');
  if (digits === '') return { negative: false, digits: '', n: 0 };
  return { negative: sign === '-', digits, n };
}

// ECMA-262 Number::toString, steps 6-10, for ±0.digits × 10^n (any number of digits).
function layout({ negative, digits, n }) {
  if (digits === '') return '0';
  const k = digits.length;
  let body;
  if (k <= n && n <= 21) {
    body = digits + '0'.repeat(n - k);
  } else if (0 < n && n <= 21) {
    body = digits.slice(0, n) + '.' + digits.slice(n);
  } else if (-6 < n && n <= 0) {
    body = '0.' + '0'.repeat(-n) + digits;
  } else {
    const e = n - 1;
    body = digits[0] + (k > 1 ? '.' + digits.slice(1) : '') + 'e' + (e < 0 ? '-' : '+') + Math.abs(e);
  }
  return (negative ? '-' : '') + body;
}

function canonicalNumber(spelling) {
  const exact = exactDecimal(spelling);
  const text = layout(exact);
  // Where a double holds the value exactly enough (at most 15 significant digits, well
  // inside the exponent range), the engine's own String(Number) must agree with layout().
  if (exact.digits.length <= 15 && Math.abs(exact.n) < 300) {
    const engine = String(Number(spelling));
    if (engine !== text && !(engine === '-0' && text === '0')) {
      throw new Error(`layout ${text} but String(Number(${spelling})) is ${engine}`);
    }
  }
  return text;
}

// ---------------------------------------------------------------------------------------
// The canonical text.

function parse(text) {
  return JSON.parse(text, (key, value, ctx) =>
    typeof value === 'number' ? new Num(ctx.source) : value);
}

function checkString(s) {
  if (s.includes('\u0000')) throw new Error('jsonb cannot hold U+0000');
  if (!s.isWellFormed()) throw new Error(`lone surrogate in ${JSON.stringify(s)}`);
  return s;
}

function canonical(value) {
  if (value === null || value === true || value === false) return String(value);
  if (value instanceof Num) return canonicalNumber(value.source);
  if (typeof value === 'string') return JSON.stringify(checkString(value));
  if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
  const keys = Object.keys(value).map(checkString).sort();
  return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonical(value[k])).join(',') + '}';
}

// ---------------------------------------------------------------------------------------
// The commands.

const commands = [];
const add = (text) => commands.push(text);

// Top-level scalars and empty containers.
for (const t of ['null', 'true', 'false', '0', '1', '-1', '""', '"x"', '{}', '[]', '[{}]', '[[]]',
  '{"a":{}}', '{"a":[]}', '[[[]],{}]', '{"":""}', '{"":{"":{}}}', '[null,true,false]']) add(t);

// Whitespace around tokens does not matter.
add(' { "b" : 1 , "a" : [ 1 , 2 ] } ');
add('[ ]');
add('{ }');
add('  "spaced"  ');

// Key order: jsonb stores keys by length then bytes; RFC 8785 sorts by UTF-16 code units.
add('{"b":1,"a":2}');
add('{"a":2,"b":1}');
add('{"aa":1,"b":2}');
add('{"b":1,"aa":2,"a":3,"ab":4,"ba":5,"":6}');
add('{"B":1,"a":2,"A":3,"b":4,"_":5,"0":6,"~":7}');
add('{"10":1,"9":2,"1":3,"01":4,"-1":5}');
add('{"zzzz":1,"zzz":2,"zz":3,"z":4}');
add('{"é":1,"e":2,"f":3,"ö":4,"z":5}');
add('{"\u00e9":1,"e\u0301":2}');
add('{"€":1,"$":2,"£":3,"¥":4}');
// RFC 8785 section 3.2.3's sorting example.
add('{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With Dagesh",' +
  '"1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control","\\u00f6":"Latin Small Letter O With Diaeresis"}');
// Surrogate pairs (U+10000 and up) sort before U+E000..U+FFFF in UTF-16, after them in UTF-8.
add('{"\ufb33":1,"\u{1f600}":2}');
add('{"\u{1f600}":1,"\ufb33":2}');
add('{"\ue000":1,"\u{10000}":2,"\ud7ff":3,"\uffff":4,"\u{10ffff}":5}');
add('{"a\uffff":1,"a\u{1f600}":2,"a":3}');
add('{"\uff21":1,"\u{1d400}":2,"A":3,"\u0391":4}');
add('{"\u{1f600}":1,"\u{1f601}":2,"\u{1f600}\u{1f600}":3,"\u{1f4a9}":4}');
add('{"\\ud83d\\ude00":"escaped","\u{1f601}":"raw"}');
add('{"\u4e2d":1,"\u6587":2,"\u65e5\u672c":3,"\ud55c":4}');
add('{"\u0430":1,"a":2,"\u0410":3,"A":4}');
add('{"key with spaces":1,"key\\twith\\ttabs":2,"key\\nnewline":3}');
add('{"\\u0001":1,"\\u001f":2," ":3,"\\"":4,"\\\\":5,"/":6}');
add('{"\\b":1,"\\f":2,"\\n":3,"\\r":4,"\\t":5}');
add('{"\u007f":1,"\u0080":2,"\u00ff":3,"\u0100":4}');
add('{"\u2028":1,"\u2029":2,"\ufeff":3}');

// Duplicate keys: jsonb keeps the last.
add('{"a":1,"a":2}');
add('{"a":2,"a":1}');
add('{"a":1,"b":2,"a":3}');
add('{"a":{"x":1},"a":[1]}');
add('{"a":[1],"a":{"x":1}}');
add('{"a":null,"a":false,"a":true}');
add('{"x":{"k":1,"k":2},"x":{"k":3,"k":4}}');
add('{"a":1,"A":2,"a":3}');
add('{"\u{1f600}":1,"\\ud83d\\ude00":2}');
add('{"\u00e9":1,"\\u00e9":2}');
add('[{"a":1,"a":2},{"b":1,"b":2}]');
add('{"amount":"10.00","amount":"11.00"}');
add('{"a":1.0,"a":1}');

// Numbers.
for (const n of [
  '0', '-0', '0.0', '-0.0', '0.000', '-0.000', '0e0', '0E5', '-0e-5', '0.00e+10',
  '1', '-1', '1.0', '1.00', '-1.0', '1.5', '1.50', '15e-1', '0.15e1', '150e-2',
  '10', '1e1', '1E1', '1e+1', '1E+01', '10.0', '100', '1e2', '1000000', '1e6',
  '0.1', '0.2', '0.3', '0.30000000000000004', '0.1e0', '1e-1', '100e-3',
  '123', '-123', '123.456', '-123.456', '1234.5678e10', '-12.34E-5', '0.00120e2',
  '1e20', '1e21', '1e22', '100000000000000000000', '1000000000000000000000',
  '123456789012345678901', '1234567890123456789012', '999999999999999999999',
  '1e-6', '1e-7', '0.000001', '0.0000001', '1.5e-6', '1.5e-7', '0.0000015', '0.00000015',
  '-1e-6', '-1e-7', '1.2345e-5', '1.2345e-6', '1.2345e-7',
  '9007199254740991', '9007199254740992', '9007199254740993', '-9007199254740993',
  '12345678901234567890', '12345678901234567891', '18446744073709551615', '18446744073709551616',
  '3.141592653589793', '3.141592653589793238462643383279', '2.718281828459045235360287471352',
  '0.1000000000000000055511151231257827',
  '5e-324', '4.9406564584124654e-324', '2.2250738585072014e-308', '1.7976931348623157e308',
  '1.7976931348623157e+308', '2e308', '1e400', '-1e400', '1e-400', '-1e-400', '1e1000', '1e-1000',
  '123456789e-20', '123456789e20', '1.000000000000000000001', '0.99999999999999999999',
  '100000000000000000000000000000000000000001', '1e-10', '1e10', '1e15', '1e16', '1e17',
  '4294967295', '4294967296', '-2147483648', '2147483647', '65535', '9999', '10000', '10001',
  '0.0001', '0.00001', '0.000010', '1.0e-4', '99.99', '99.990', '-99.99e0',
]) add(n);
add('[1,1.0,1.00,1e0,10e-1,0.1e1]');
add('{"amount":10.00,"fee":0.50,"total":10.5}');
add('{"n":-0,"m":0,"z":0.0}');
add('[1e21,1e-7,123e-9,5e-7,1.23e25]');
add('{"big":12345678901234567890123456789012345678901234567890}');
add('{"small":0.00000000000000000000000000000000000000000000000001}');

// Strings.
for (const s of [
  '""', '"a"', '"10.00"', '"10.0"', '"1e1"', '"true"', '"null"', '" "', '"  padded  "',
  '"\\""', '"\\\\"', '"\\/"', '"/"', '"\\b\\f\\n\\r\\t"', '"tab\\tinside"', '"line\\nbreak"',
  '"\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007"', '"\\u000b\\u000e\\u000f\\u0010\\u001f"',
  '"\\u0008\\u000c\\u000a\\u000d\\u0009"', '"\\u001F\\u001E"', '"\\u007f"', '"\u007f"',
  '"\\u0080"', '"\\u00e9"', '"\u00e9"', '"e\\u0301"', '"\\u00E9"', '"\\u2028\\u2029"',
  '"\u2028\u2029"', '"\\ufeff"', '"\\uffff"', '"\\ue000"', '"\\ud83d\\ude00"', '"\u{1f600}"',
  '"\\uD83D\\uDE00"', '"\\ud800\\udc00"', '"\\udbff\\udfff"', '"\u{10ffff}"',
  '"Grüße aus Köln"', '"日本語のテキスト"', '"Ελληνικά"', '"עברית"', '"العربية"', '"👍🏽👨‍👩‍👧"',
  '"mixed \\"quotes\\" and \\\\backslashes\\\\"', '"<script>alert(1)</script>"', '"\'single\'"',
  '"\\u0041\\u0042\\u0043"', '"a\\u0020b"',
  '"0"', '"-0"', '"[]"', '"{}"',
]) add(s);
add(JSON.stringify('x'.repeat(300)));
add(JSON.stringify('é'.repeat(100) + '\u{1f600}'.repeat(50)));
add(JSON.stringify(Array.from({ length: 31 }, (_, i) => String.fromCharCode(i + 1)).join('')));

// Nesting.
add('['.repeat(20) + ']'.repeat(20));
add('['.repeat(30) + '1' + ']'.repeat(30));
add('{"a":'.repeat(15) + 'null' + '}'.repeat(15));
add('{"b":{"d":1,"c":2},"a":{"f":[3,{"h":4,"g":5}],"e":6}}');
add('[{"b":1,"a":2},[{"d":3,"c":4}],{"e":[{"g":5,"f":6}]}]');
add('{"z":[],"y":{},"x":[[]],"w":[{}],"v":{"u":{}}}');
add('[1,"1",true,null,{"1":1},[1]]');
add('{"list":[3,1,2],"set":[1,2,3]}');
add('[[1,2],[2,1]]');
add('{"a":[{"a":[{"a":[]}]}]}');

// Realistic commands.
add('{"amount":"10.00","currency":"EUR"}');
add('{"currency":"EUR","amount":"10.00"}');
add('{"amount":10.00,"currency":"EUR"}');
add('{"amount":1000,"currency":"USD","customer":"cus_9s6XKzkNRiz8i3","description":"Order #1234",' +
  '"metadata":{"order_id":"6735","shipping":"express"},"capture":true,"receipt_email":null}');
add('{"type":"transfer","from":{"iban":"DE89370400440532013000"},"to":{"iban":"FR1420041010050500013M02606"},' +
  '"amount":{"value":"250.00","currency":"EUR"},"reference":"Rechnung Nr. 42 – März"}');
add('{"op":"create_user","user":{"name":"Zoë Ådahl","email":"zoe@example.com","roles":["admin","dev"],"age":34}}');
add('{"items":[{"sku":"A-1","qty":2,"price":9.99},{"sku":"B-2","qty":1,"price":19.5}],"coupon":null,"total":39.48}');
add('{"event":"order.paid","data":{"id":42,"at":"2026-11-28T10:00:00Z","tags":[]},"version":2}');
add('{"query":"SELECT 1","params":[],"timeout_ms":5000}');
add('{"path":"/v1/charges","method":"POST","body":{"amount":500}}');

// Wide containers: more children than jsonb's offset stride (32).
add('[' + Array.from({ length: 40 }, (_, i) => i).join(',') + ']');
add('[' + Array.from({ length: 70 }, (_, i) => JSON.stringify('s' + i)).join(',') + ']');
add('{' + Array.from({ length: 40 }, (_, i) => `"k${39 - i}":${i}`).join(',') + '}');
add('{' + Array.from({ length: 65 }, (_, i) => `"${'x'.repeat(i % 7)}${i}":[${i}]`).join(',') + '}');

// Random values from a fixed seed (xorshift64*), keys from an alphabet that mixes ASCII,
// Latin-1, BMP above U+E000 and surrogate pairs.
let state = 0x2545f4914f6cdd1dn;
function rand(n) {
  state ^= state >> 12n;
  state ^= BigInt.asUintN(64, state << 25n);
  state ^= state >> 27n;
  return Number(BigInt.asUintN(64, state * 0x2545f4914f6cdd1dn) >> 11n) % n;
}
const pick = (list) => list[rand(list.length)];
const keyChars = ['a', 'b', 'c', 'A', '_', '1', 'é', 'ß', '\u00a0', '\uff21', '\ufb33', '\ue000',
  '\u{1f600}', '\u{10000}', '\u4e2d', '\\n', '\\"', '\\u00e9', '\\ud83d\\ude00', '\\u001f'];
const strChars = keyChars.concat([' ', 'x', 'y', 'z', '0', '\\t', '\\\\', '/', '\\/', '\u2028', '\u007f']);
function randText(chars, max) {
  let s = '';
  for (let i = rand(max + 1); i > 0; i--) s += pick(chars);
  return '"' + s + '"';
}
function randNumber() {
  let s = rand(3) === 0 ? '-' : '';
  const intLen = rand(25);
  if (intLen === 0 || rand(4) === 0) s += '0';
  else {
    s += String(1 + rand(9));
    for (let i = 1; i < intLen; i++) s += String(rand(3) === 0 ? 0 : rand(10));
  }
  if (rand(2) === 0) {
    s += '.';
    for (let i = 1 + rand(20); i > 0; i--) s += String(rand(3) === 0 ? 0 : rand(10));
  }
  if (rand(3) === 0) s += pick(['e', 'E']) + pick(['', '+', '-']) + String(rand(40));
  return s;
}
function randValue(depth) {
  const kind = rand(depth >= 4 ? 4 : 7);
  if (kind === 0) return pick(['null', 'true', 'false']);
  if (kind === 1 || kind === 2) return randNumber();
  if (kind === 3) return randText(strChars, 8);
  if (kind === 4) {
    const n = rand(5);
    return '[' + Array.from({ length: n }, () => randValue(depth + 1)).join(',') + ']';
  }
  const n = rand(6);
  const ws = () => pick(['', '', ' ']);
  return '{' + Array.from({ length: n }, () =>
    ws() + randText(keyChars, 3) + ws() + ':' + ws() + randValue(depth + 1)).join(',') + '}';
}
for (let i = 0; i < 120; i++) add('{' + `"r":${i},"v":` + randValue(0) + '}');
for (let i = 0; i < 30; i++) add(randValue(1));

// ---------------------------------------------------------------------------------------
// Output.

const header = [
  '# Frozen fingerprint vectors, version 1. DO NOT EDIT: changing, removing or reordering a',
  '# row, or any row\'s canonical text or fingerprint, is a breaking change of the fingerprint',
  '# (records stored by one version must match under every later one). Add a new file instead.',
  '# Made by `node --harmony-json-parse-with-source gen_fingerprints.js` (an implementation',
  '# that shares no code with the extension). Columns, tab-separated, one command per row:',
  '# command (JSON text as sent) <TAB> idem_canonical(command::jsonb) <TAB>',
  '# encode(idem_fingerprint(command::jsonb), \'hex\') = SHA-256 of the canonical UTF-8 text.',
  '# Lines starting with # are comments.',
];
const seen = new Set();
const rows = [];
for (const command of commands) {
  if (seen.has(command)) continue;
  seen.add(command);
  if (/[\t\n\r]/.test(command)) throw new Error(`raw tab or newline in ${command}`);
  if (command.startsWith('#')) throw new Error(`command looks like a comment: ${command}`);
  const text = canonical(parse(command));
  const hash = crypto.createHash('sha256').update(text, 'utf8').digest('hex');
  rows.push(`${command}\t${text}\t${hash}`);
}
process.stdout.write(header.join('\n') + '\n' + rows.join('\n') + '\n');
