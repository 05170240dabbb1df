/**
 * Entry point. Its first act is to take SIGHUP: Node's default for it is to exit, and an
 * operator's reload (`systemctl reload`) may come at any moment of a start-up that takes
 * seconds on a large pool. Only then is the wiring (serve.ts) loaded: ES module imports are
 * all loaded before a module's first line runs, so nothing here may import it statically.
 * A SIGHUP before the registry is up is kept, and becomes one reload once it is.
 */
import { errorMessage } from './domain/errors.js'; // a few lines with no imports of its own: loaded at once

let reload: (() => void) | null = null;
let reloadWanted = false;
process.on('SIGHUP', () => {
  if (reload) reload();
  else reloadWanted = true;
});

try {
  const { serve } = await import('./serve.js');
  await serve({
    onReload(fn: () => void): void {
      reload = fn;
      if (reloadWanted) {
        reloadWanted = false;
        fn();
      }
    },
  });
} catch (e) {
  process.stderr.write(`asg-id-registry: ${errorMessage(e)}\n`);
  process.exit(1);
}
