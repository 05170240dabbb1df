/**
 * The README is read by people who have nothing else: what it shows must be true. Its
 * walk-through is run, in the order written, against a real registry and every answer is
 * compared with the `#>` lines under its command; its configuration table and quick start, and
 * the install steps in docs/operations.md, are checked against what the repository ships. The
 * code blocks are parsed from the documents themselves, so documents and test cannot drift apart.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, symlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import { loadConfig } from '../../src/config.js';
import { tempDir } from '../support/helpers.js';
import { ROOT, buildOnce, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
/** Where the operator's install steps live since the README was split by reader. */
const OPERATIONS = readFileSync(join(ROOT, 'docs/operations.md'), 'utf8');

/** Every Markdown file under docs/, as [path relative to the root, text]. */
function docs(): Array<[string, string]> {
  return readdirSync(join(ROOT, 'docs'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => [relative(ROOT, join(ROOT, 'docs', f)), readFileSync(join(ROOT, 'docs', f), 'utf8')]);
}

/** The text under a heading of a document (the README unless told), up to the next heading of the same or a higher level. */
function section(title: string, doc = README): string {
  const lines = doc.split('\n');
  let inFence = false;
  let start = -1;
  let level = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (line.startsWith('```')) inFence = !inFence;
    const m = inFence ? null : /^(#+) (.*)$/.exec(line);
    if (!m) continue;
    const depth = (m[1] ?? '').length;
    if (start >= 0 && depth <= level) return lines.slice(start, i).join('\n');
    if (start < 0 && m[2] === title) {
      start = i + 1;
      level = depth;
    }
  }
  if (start < 0) throw new Error(`no section "${title}" in ${doc === README ? 'README.md' : 'the document'}`);
  return lines.slice(start).join('\n');
}

/** The fenced code blocks of a piece of README, with their language. */
function codeBlocks(text: string): Array<{ lang: string; body: string }> {
  return [...text.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1] ?? '', body: m[2] ?? '' }));
}

// ---- a small, strict shell-word reader: enough for the README's curl lines, and nothing else ----

/** Splits a command line into words the way sh would, expanding $VAR and ${VAR}; refuses what sh would treat specially. */
export function shellWords(line: string, vars: Readonly<Record<string, string>>): string[] {
  const words: string[] = [];
  let word: string | null = null;
  const expand = (s: string, at: number): { value: string; next: number } => {
    const m = /^\$(?:\{(\w+)\}|(\w+))/.exec(s.slice(at));
    if (!m) throw new Error(`a bare $ in: ${line}`);
    const name = m[1] ?? m[2] ?? '';
    const value = vars[name];
    if (value === undefined) throw new Error(`$${name} is not set before: ${line}`);
    return { value, next: at + m[0].length };
  };
  for (let i = 0; i < line.length;) {
    const c = line[i] ?? '';
    if (c === ' ' || c === '\t') {
      if (word !== null) words.push(word);
      word = null;
      i++;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unclosed ' in: ${line}`);
      word = (word ?? '') + line.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      let j = i + 1;
      word ??= '';
      for (; j < line.length && line[j] !== '"'; ) {
        if (line[j] === '$') {
          const { value, next } = expand(line, j);
          word += value;
          j = next;
        } else if (line[j] === '\\' || line[j] === '`') {
          throw new Error(`an escape or backquote inside "…" in: ${line}`);
        } else {
          word += line[j];
          j++;
        }
      }
      if (j >= line.length) throw new Error(`unclosed " in: ${line}`);
      i = j + 1;
    } else if (c === '$') {
      const { value, next } = expand(line, i);
      // Unquoted, sh would split the value on spaces: the README must quote such values.
      if (/\s/.test(value)) throw new Error(`$… holding spaces must be quoted in: ${line}`);
      word = (word ?? '') + value;
      i = next;
    } else if ('&|;<>()`\\*?[]{}#~!'.includes(c) && !(c === '#' && word !== null)) {
      throw new Error(`unquoted ${c} (sh would not pass it to curl as written) in: ${line}`);
    } else {
      word = (word ?? '') + c;
      i++;
    }
  }
  if (word !== null) words.push(word);
  return words;
}

interface CurlRequest { method: string; url: string; headers: Record<string, string>; body?: string; include: boolean }

/** The curl options the README uses (-s, -i, -X, -H, -d); anything else fails the test. */
function curlRequest(words: readonly string[]): CurlRequest {
  if (words[0] !== 'curl') throw new Error(`not a curl command: ${words.join(' ')}`);
  const req: CurlRequest = { method: '', url: '', headers: {}, include: false };
  for (let i = 1; i < words.length; i++) {
    const w = words[i] ?? '';
    if (/^-[si]+$/.test(w)) {
      if (w.includes('i')) req.include = true;
    } else if (w.startsWith('-X')) {
      req.method = w.length > 2 ? w.slice(2) : (words[++i] ?? '');
    } else if (w === '-H') {
      const h = words[++i] ?? '';
      const colon = h.indexOf(':');
      req.headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
    } else if (w === '-d') {
      req.body = words[++i] ?? '';
    } else if (!w.startsWith('-') && req.url === '') {
      req.url = w;
    } else {
      throw new Error(`curl option ${w} is not one this test knows`);
    }
  }
  req.method ||= req.body !== undefined ? 'POST' : 'GET';
  return req;
}

// ---- comparing an answer with what the README shows ----

const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** Times, uptime and the seconds in a reason differ from run to run; everything else must match. */
function normalize(v: unknown, key = ''): unknown {
  if (Array.isArray(v)) return v.map((x) => normalize(x));
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x, k)]));
  if (key === 'uptime') return typeof v === 'string' && /^(\d+[dhms]){1,2}$/.test(v) ? '<uptime>' : v;
  if (key === 'uptime_seconds') return typeof v === 'number' ? '<seconds>' : v;
  if (typeof v === 'string' && ISO_TIME.test(v)) return '<time>';
  if (key === 'reason' && typeof v === 'string') return v.replace(/\d+/g, 'N');
  return v;
}

/** The time from last_seen to expires_at (the TTL) in every object that has both. */
function ttls(v: unknown, out: number[] = []): number[] {
  if (Array.isArray(v)) v.forEach((x) => ttls(x, out));
  else if (typeof v === 'object' && v !== null) {
    const o = Object.fromEntries(Object.entries(v));
    if (typeof o['last_seen'] === 'string' && typeof o['expires_at'] === 'string') out.push(Date.parse(o['expires_at']) - Date.parse(o['last_seen']));
    Object.values(o).forEach((x) => ttls(x, out));
  }
  return out;
}

function expectSameJson(actualText: string, shown: string, what: string): void {
  const actual: unknown = JSON.parse(actualText);
  let expected: unknown;
  try {
    expected = JSON.parse(shown);
  } catch {
    throw new Error(`the README's answer to ${what} is not JSON: ${shown}`);
  }
  expect(JSON.stringify(normalize(actual)), what).to.equal(JSON.stringify(normalize(expected)));
  expect(ttls(actual), `${what}: expires_at - last_seen`).to.deep.equal(ttls(expected));
}

interface Step { line: string; shown: string[] }

/** The walk-through: commands in order, each with the `#>` lines under it. */
function walkThrough(): Step[] {
  const steps: Step[] = [];
  for (const block of codeBlocks(section('Walk-through')).filter((b) => b.lang === 'sh')) {
    for (const line of block.body.split('\n')) {
      if (line.startsWith('#>')) {
        const last = steps.at(-1);
        if (!last) throw new Error(`an answer before any command: ${line}`);
        last.shown.push(line.replace(/^#> ?/, ''));
      } else if (line.trim() !== '' && !line.startsWith('#')) {
        steps.push({ line, shown: [] });
      }
    }
  }
  return steps;
}

async function runStep(step: Step, vars: Record<string, string>): Promise<void> {
  const assign = /^(\w+)=(.*)$/.exec(step.line);
  if (assign) {
    const words = shellWords(assign[2] ?? '', vars);
    expect(words, step.line).to.have.length(1);
    vars[assign[1] ?? ''] = words[0] ?? '';
    return;
  }
  const req = curlRequest(shellWords(step.line, vars));
  expect(step.shown, `the README shows what ${step.line} prints`).to.not.be.empty;
  const res = await fetch(req.url, { method: req.method, headers: req.headers, ...(req.body !== undefined ? { body: req.body } : {}) });
  const text = await res.text();
  if (!req.include) {
    expectSameJson(text, step.shown.join(''), step.line);
    return;
  }
  // -i: the status line, the headers the README shows (it leaves the others out), a blank line, the body.
  const blank = step.shown.indexOf('');
  expect(blank, `${step.line}: a blank line between headers and body`).to.be.greaterThan(0);
  expect(`HTTP/1.1 ${res.status} ${res.statusText}`).to.equal(step.shown[0]);
  for (const h of step.shown.slice(1, blank)) {
    const colon = h.indexOf(':');
    expect(res.headers.get(h.slice(0, colon)), `${step.line}: header ${h}`).to.equal(h.slice(colon + 1).trim());
  }
  expectSameJson(text, step.shown.slice(blank + 1).join(''), step.line);
}

describe('README.md', function () {
  this.timeout(60_000);

  it('stands on its own, with docs/: they cite no file a user of the repository does not have', () => {
    expect(README).to.not.match(/SPEC\.md|ARCHITECTURE\.md|\.\.\/shared/);
    const all = docs();
    expect(all.map(([f]) => f)).to.include('docs/operations.md');
    for (const [file, text] of all) expect(text, file).to.not.match(/SPEC\.md|ARCHITECTURE\.md|\.\.\/shared/);
  });

  describe('the walk-through, run in the order written against a real registry', () => {
    let t: ReturnType<typeof tempDir>;
    let reg: RunningRegistry;
    before(async () => {
      t = tempDir();
      // The quick start's registry: its defaults and the seed pool. Only the scheduled sweep is
      // moved out of the way, so that what /health says of the last sweep is the walk-through's own.
      reg = await startProcess({ dir: t.dir, env: { POOL_FILE: join(ROOT, 'seed/identifiers.txt'), REAPER_SCHEDULE: '0 0 1 1 *' } });
    });
    after(async () => {
      await reg.stop();
      t.cleanup();
    });

    it('prints what the README shows, command after command', async () => {
      const steps = walkThrough();
      const curls = steps.filter((s) => s.line.startsWith('curl '));
      expect(curls.length).to.be.greaterThan(15);
      // Every route of the API is walked through.
      for (const route of ['/allocate', '/liveness', '/release', '/identifiers', '/client/', '/identifier/', '/history', '/admin/reap', '/health']) {
        expect(curls.some((s) => s.line.includes(route)), route).to.equal(true);
      }
      expect(curls.at(-1)?.line, 'the release comes last').to.include('/release');
      const vars: Record<string, string> = {};
      for (const step of steps) {
        await runStep(step, vars);
        if (step.line.startsWith('R=')) {
          expect(vars['R'], 'the walk-through talks to the quick start\'s address').to.equal('http://127.0.0.1:8080');
          vars['R'] = reg.base;
        }
      }
    });
  });

  it('the quick start is two commands: one installs and starts the registry, one installs and runs the tests', () => {
    const blocks = codeBlocks(section('Quick start')).filter((b) => b.lang === 'sh');
    expect(blocks).to.have.length(1);
    const commands = (blocks[0]?.body ?? '').split('\n').filter((l) => l.trim() !== '').map((l) => l.replace(/\s+#.*$/, ''));
    expect(commands).to.deep.equal(['npm ci && npm start', 'npm ci && npm test']);
  });

  it('the configuration table lists every variable the registry reads, and says a bad one exits 78', () => {
    const text = section('Configuration');
    const read = new Set<string>();
    loadConfig(new Proxy({}, { get: (_, k) => { if (typeof k === 'string') read.add(k); return undefined; } }));
    const listed = new Set([...text.matchAll(/^\| `([A-Z_]+)`(?: \/ `([A-Z_]+)`)? \|/gm)].flatMap((m) => [m[1], m[2]]).filter((x) => x !== undefined));
    expect([...read].sort()).to.deep.equal([...listed].sort());
    expect(text).to.match(/exit status 78/);
    const otherStatus = /exit (code|status) 1\)?[^\n]*(bad|setting|variable)|(bad|setting|variable)[^\n]*exit (code|status) 1\b/i;
    for (const [file, text] of [['README.md', README], ...docs()]) expect(text, `${file}: no other exit status for a bad setting`).to.not.match(otherStatus);
  });

  describe('the install steps (docs/operations.md)', () => {
    const steps = codeBlocks(section('Install the registry as a service', OPERATIONS)).find((b) => b.lang === 'sh')?.body ?? '';
    const unit = readFileSync(join(ROOT, 'systemd/asg-id-registry.service'), 'utf8');

    it('copy what the unit points at: the release tarball holds its Documentation= file and the program it runs, with node at an absolute path', () => {
      expect(steps, 'a step unpacks the tarball into /opt/asg-id-registry').to.match(/^sudo tar -xzf asg-id-registry-\S+\.tgz -C \/opt\/asg-id-registry --strip-components=1$/m);
      expect(steps, 'production dependencies only, from the shrinkwrap').to.match(/npm ci --omit=dev/);
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files?: string[] };
      const files = (pkg.files ?? []).map((f) => f.replace(/\/$/, ''));
      const doc = /^Documentation=file:\/\/\/opt\/asg-id-registry\/(\S+)$/m.exec(unit);
      expect(doc, 'Documentation= names a file under /opt/asg-id-registry').to.not.equal(null);
      expect(files, 'the tarball carries the Documentation= file').to.include(doc?.[1]);
      expect(files, 'the README links into docs/, so docs/ ships beside it').to.include('docs');
      const exec = /^ExecStart=(\S+) \/opt\/asg-id-registry\/(\S+)$/m.exec(unit);
      expect(exec?.[1], 'ExecStart runs node by its absolute path, not through /usr/bin/env and a PATH').to.equal('/usr/bin/node');
      expect(section('Install the registry as a service', OPERATIONS)).to.include('`/usr/bin/node`');
      expect(exec?.[2]).to.equal('dist/main.js'); // in the tarball's dist/ (test/system/artifact.test.ts packs and runs it)
      for (const needed of ['dist', 'seed', 'systemd', 'npm-shrinkwrap.json']) expect(files).to.include(needed);
    });

    it('put idreg on the PATH: the linked file is the package\'s bin, and it runs', async () => {
      const link = /^sudo ln -sf \/opt\/asg-id-registry\/(\S+) (\/usr\/local\/bin)\/idreg\b/m.exec(steps);
      expect(link, 'a step links idreg into /usr/local/bin').to.not.equal(null);
      const pkg: unknown = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
      const bin = typeof pkg === 'object' && pkg !== null && 'bin' in pkg && typeof pkg.bin === 'object' && pkg.bin !== null && 'idreg' in pkg.bin ? pkg.bin.idreg : null;
      expect(link?.[1]).to.equal(bin);
      // The same link, made in a folder of ours instead of /usr/local/bin, to what `npm ci` builds.
      await buildOnce();
      const t = tempDir();
      try {
        mkdirSync(join(t.dir, 'bin'));
        symlinkSync(join(ROOT, link?.[1] ?? ''), join(t.dir, 'bin', 'idreg'));
        const r = spawnSync('idreg', ['--version'], { env: { PATH: `${join(t.dir, 'bin')}:${process.env['PATH'] ?? ''}` }, encoding: 'utf8' });
        expect(r.error).to.equal(undefined);
        expect(r.stdout).to.match(/^idreg \d+\.\d+\.\d+\n$/);
        expect(r.status).to.equal(0);
      } finally {
        t.cleanup();
      }
    });
  });
});
