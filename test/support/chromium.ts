/**
 * A headless Chromium that needs nothing preinstalled: the build that the npm package
 * @sparticuz/chromium carries (brotli-compressed, with the few shared libraries it needs
 * beyond glibc, and a font), unpacked once into node_modules/.cache and reused.
 *
 * Why not the package's own executablePath(): it unpacks into the shared /tmp (where a
 * half-written binary from a concurrent run, or one of another version, would be taken as
 * ready), and it adds the bundled libraries only on Amazon Linux, so elsewhere the browser
 * would lean on the system's NSS. Here the unpacking goes to a private folder renamed into
 * place when complete, and the launch always uses the bundled libraries and font.
 */
import { createRequire } from 'node:module';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, normalize } from 'node:path';
import { brotliDecompressSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { ROOT } from './process-helpers.js';

export interface BundledChromium {
  readonly executablePath: string;
  /** Environment for the browser process: the bundled libraries and font configuration. */
  readonly env: Record<string, string>;
  /** Whether this call unpacked it (false: it was already in the cache). */
  readonly unpacked: boolean;
}

const requireHere = createRequire(import.meta.url);

function packageDir(): { dir: string; version: string } {
  // Its exports map hides package.json: start from its entry point and walk up.
  for (let dir = dirname(requireHere.resolve('@sparticuz/chromium')); dir !== dirname(dir); dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (!existsSync(manifest)) continue;
    const parsed: unknown = JSON.parse(readFileSync(manifest, 'utf8'));
    if (typeof parsed === 'object' && parsed !== null && 'name' in parsed && parsed.name === '@sparticuz/chromium' && 'version' in parsed) {
      return { dir, version: String(parsed.version) };
    }
  }
  throw new Error('@sparticuz/chromium is not installed (npm ci installs it)');
}

/** Writes the regular files and folders of a ustar archive under `dest` (all these archives hold). */
export function untar(archive: Buffer, dest: string): void {
  const cstr = (b: Buffer): string => {
    const end = b.indexOf(0);
    return b.subarray(0, end === -1 ? b.length : end).toString('utf8');
  };
  for (let off = 0; off + 512 <= archive.length;) {
    const header = archive.subarray(off, off + 512);
    if (header.every((x) => x === 0)) break;
    const prefix = cstr(header.subarray(345, 500));
    const name = (prefix ? `${prefix}/` : '') + cstr(header.subarray(0, 100));
    const size = parseInt(cstr(header.subarray(124, 136)).trim() || '0', 8);
    const mode = parseInt(cstr(header.subarray(100, 108)).trim() || '644', 8);
    const type = String.fromCharCode(header[156] ?? 0);
    const target = normalize(join(dest, name));
    if (!target.startsWith(normalize(dest))) throw new Error(`tar entry ${name} leaves ${dest}`);
    off += 512;
    if (type === '5') {
      mkdirSync(target, { recursive: true });
    } else if (type === '0' || type === '\0') {
      mkdirSync(dirname(target), { recursive: true });
      writeFileSync(target, archive.subarray(off, off + size));
      chmodSync(target, mode & 0o755);
    } else {
      throw new Error(`tar entry ${name}: type ${JSON.stringify(type)} not handled`);
    }
    off += Math.ceil(size / 512) * 512;
  }
}

/** Unpacks into `into`, which will be renamed to `final` (the paths written in files name `final`). */
function unpack(bin: string, into: string, final: string): void {
  mkdirSync(into, { recursive: true });
  writeFileSync(join(into, 'chromium'), brotliDecompressSync(readFileSync(join(bin, 'chromium.br'))), { mode: 0o755 });
  // Chromium looks for libEGL/libGLESv2 (SwiftShader) beside its own binary.
  untar(brotliDecompressSync(readFileSync(join(bin, 'swiftshader.tar.br'))), into);
  // NSS, NSPR and expat, built for Amazon Linux 2023 (glibc 2.34): lib/*.so.
  untar(brotliDecompressSync(readFileSync(join(bin, 'al2023.tar.br'))), into);
  untar(brotliDecompressSync(readFileSync(join(bin, 'fonts.tar.br'))), into);
  // The shipped fonts.conf names Lambda's folders; point fontconfig at ours.
  writeFileSync(join(into, 'fonts.conf'), [
    '<?xml version="1.0"?>', '<!DOCTYPE fontconfig SYSTEM "fonts.dtd">', '<fontconfig>',
    `  <dir>${join(final, 'fonts')}</dir>`, `  <cachedir>${join(final, 'fonts-cache')}</cachedir>`, '</fontconfig>', '',
  ].join('\n'));
  writeFileSync(join(into, 'complete'), '');
}

/** Unpacks the bundled Chromium if it is not in the cache yet, and says how to launch it. */
export function bundledChromium(): BundledChromium {
  const pkg = packageDir();
  const dir = join(ROOT, 'node_modules', '.cache', 'asg-id-registry', `chromium-${pkg.version}`);
  let unpacked = false;
  if (!existsSync(join(dir, 'complete'))) {
    const staging = `${dir}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      unpack(join(pkg.dir, 'bin'), staging, dir);
      // An incomplete copy can only be left by a run killed before its rename: not in use.
      if (existsSync(dir) && !existsSync(join(dir, 'complete'))) rmSync(dir, { recursive: true, force: true });
      renameSync(staging, dir);
      unpacked = true;
    } catch (e) {
      // Another run may have renamed its complete copy into place first: use that one.
      if (!existsSync(join(dir, 'complete'))) throw e;
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }
  return {
    executablePath: join(dir, 'chromium'),
    env: {
      LD_LIBRARY_PATH: join(dir, 'lib'),
      FONTCONFIG_FILE: join(dir, 'fonts.conf'),
      HOME: dir,
    },
    unpacked,
  };
}

/** The bundled Chromium, headless, launched as the browser tests need it (no sandbox, no network chatter). */
export async function launchChromium(): Promise<Browser> {
  const bundled = bundledChromium();
  return chromium.launch({
    executablePath: bundled.executablePath,
    env: { ...process.env, ...bundled.env },
    args: ['--no-zygote', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
