/**
 * The documentation is split by reader (README.md, docs/, bench/), held together by relative
 * links: every one of them must lead somewhere. A link to a file must name a file or folder of
 * the repository, and a link with an anchor (`ha.md#what-the-fleet-sees-during-a-database-failover`,
 * `#configuration`) must name a heading of the target, slugged the way GitHub slugs headings.
 * Links inside code (fenced blocks, `inline`) are not links; web addresses are not checked.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT } from '../support/process-helpers.js';

/** The text of a Markdown document outside code: fenced blocks blanked, inline code spans removed. */
function prose(text: string): string[] {
  let fence: string | null = null;
  return text.split('\n').map((line) => {
    const m = /^\s*(`{3,}|~{3,})/.exec(line);
    if (fence !== null) {
      if (m && m[1]?.[0] === fence[0] && (m[1]?.length ?? 0) >= fence.length) fence = null;
      return '';
    }
    if (m) {
      fence = m[1] ?? '```';
      return '';
    }
    return line.replace(/(`+)[^`]*?\1/g, '');
  });
}

/** GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), each space a hyphen. */
export function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link in a heading keeps its text
    .replace(/`/g, '')
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '').replace(/\s/g, '-');
}

/** The anchors a document's headings make, duplicates numbered as GitHub numbers them. */
export function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let fence: string | null = null;
  for (const line of text.split('\n')) {
    const f = /^\s*(`{3,}|~{3,})/.exec(line);
    if (fence !== null) {
      if (f && f[1]?.[0] === fence[0]) fence = null;
      continue;
    }
    if (f) {
      fence = f[1] ?? '```';
      continue;
    }
    const h = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!h) continue;
    const base = slug(h[1] ?? '');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** The targets of a document's inline links and images, with the line each is on. */
export function linkTargets(text: string): Array<{ target: string; line: number }> {
  const out: Array<{ target: string; line: number }> = [];
  prose(text).forEach((line, i) => {
    for (const m of line.matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
      out.push({ target: m[1] ?? '', line: i + 1 });
    }
  });
  return out;
}

/** Every broken relative link or anchor in the given files (paths relative to root), as readable lines. */
export function brokenLinks(root: string, files: readonly string[]): string[] {
  const problems: string[] = [];
  const anchorCache = new Map<string, Set<string>>();
  const anchorsOf = (file: string): Set<string> => {
    let a = anchorCache.get(file);
    if (!a) {
      a = anchors(readFileSync(file, 'utf8'));
      anchorCache.set(file, a);
    }
    return a;
  };
  for (const file of files) {
    const abs = join(root, file);
    for (const { target, line } of linkTargets(readFileSync(abs, 'utf8'))) {
      const where = `${file}:${line}: ${target}`;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:, …: not a file of ours
      const hash = target.indexOf('#');
      const pathPart = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const fragment = hash < 0 ? null : decodeURIComponent(target.slice(hash + 1));
      if (isAbsolute(pathPart)) {
        problems.push(`${where} (an absolute path: links must be relative)`);
        continue;
      }
      const dest = pathPart === '' ? abs : resolve(dirname(abs), pathPart);
      const inside = relative(root, dest);
      if (inside.startsWith('..') || isAbsolute(inside)) {
        problems.push(`${where} (leads outside the repository)`);
        continue;
      }
      if (!existsSync(dest)) {
        problems.push(`${where} (no such file)`);
        continue;
      }
      if (fragment === null) continue;
      if (statSync(dest).isDirectory() || !dest.endsWith('.md')) {
        problems.push(`${where} (an anchor into something that is not a Markdown file)`);
        continue;
      }
      if (!anchorsOf(dest).has(fragment)) problems.push(`${where} (no heading makes #${fragment})`);
    }
  }
  return problems;
}

/** README.md, bench/README.md and every Markdown file under docs/ and bench/results/. */
function documentation(): string[] {
  const under = (dir: string): string[] => existsSync(join(ROOT, dir))
    ? readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.md')).map((f) => join(dir, f))
    : [];
  return ['README.md', 'bench/README.md', ...under('docs'), ...under('bench/results')].sort();
}

describe('documentation links', () => {
  it('every relative link and anchor in README.md, docs/ and bench/ resolves', () => {
    const files = documentation();
    expect(files).to.include.members(['README.md', 'bench/README.md', 'docs/safety.md', 'docs/api.md']);
    const links = files.reduce((n, f) => n + linkTargets(readFileSync(join(ROOT, f), 'utf8')).length, 0);
    expect(links, 'the documents link to each other').to.be.greaterThan(50);
    expect(brokenLinks(ROOT, files)).to.deep.equal([]);
  });

  it('the README links to every document under docs/ (its map of the docs is complete)', () => {
    const readme = new Set(linkTargets(readFileSync(join(ROOT, 'README.md'), 'utf8')).map((l) => l.target.replace(/#.*$/, '')));
    const missing = documentation().filter((f) => f.startsWith('docs/') && !readme.has(f));
    expect(missing).to.deep.equal([]);
  });

  it('finds a missing file, a missing anchor, a path outside the repository and an anchor into a folder; ignores code and web addresses', () => {
    const t = tempDir();
    try {
      mkdirSync(join(t.dir, 'docs'));
      writeFileSync(join(t.dir, 'docs', 'b.md'), '# B\n\n## Riding out an outage: `REUSE_COOLDOWN_SECONDS` is the tolerance\n\n## Twice\n\n## Twice\n');
      writeFileSync(join(t.dir, 'a.md'), [
        '# A', '',
        'Good: [b](docs/b.md), [section](docs/b.md#riding-out-an-outage-reuse_cooldown_seconds-is-the-tolerance),',
        '[second of two](docs/b.md#twice-1), [here](#a), [folder](docs/), [web](https://example.com/x.md#nowhere).',
        'Bad: [gone](docs/c.md), [no heading](docs/b.md#riding-out-an-outage), [out](../elsewhere.md),',
        '[into a folder](docs/#b).',
        'Code is not a link: `[x](nowhere.md)`', '',
        '```md', '[y](nowhere-either.md)', '```',
      ].join('\n'));
      expect(brokenLinks(t.dir, ['a.md'])).to.deep.equal([
        'a.md:5: docs/c.md (no such file)',
        'a.md:5: docs/b.md#riding-out-an-outage (no heading makes #riding-out-an-outage)',
        'a.md:5: ../elsewhere.md (leads outside the repository)',
        'a.md:6: docs/#b (an anchor into something that is not a Markdown file)',
      ]);
    } finally {
      t.cleanup();
    }
  });

  it('slugs headings as GitHub does', () => {
    expect(slug('When /health says degraded')).to.equal('when-health-says-degraded');
    expect(slug('idreg, the operator command')).to.equal('idreg-the-operator-command');
    expect(slug("Riding out a registry outage: `REUSE_COOLDOWN_SECONDS` is the fleet's tolerance"))
      .to.equal('riding-out-a-registry-outage-reuse_cooldown_seconds-is-the-fleets-tolerance');
    expect(slug('Guarantees, and how they are tested')).to.equal('guarantees-and-how-they-are-tested');
    expect(slug('0001. SQLite by default')).to.equal('0001-sqlite-by-default');
  });
});
