/**
 * What makes an acknowledged write stay: the WAL fsynced off the event loop before a durable
 * batch is answered (the connection runs synchronous=NORMAL, see migrate.ts; NORMAL plus this
 * fsync is FULL), and the check that the file the connection writes to is still the one at
 * its path. (WAL checkpoints, the other half of the log's life: checkpointer.ts.)
 */
import { closeSync, fsyncSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { RegistryError } from '../../domain/errors.js';

export type Fsync = (fd: number, done: (err: Error | null) => void) => void;

/** The database file as opened: its path and which file it was then. */
export class DatabaseFile {
  private readonly dev: number;
  private readonly ino: number;

  constructor(readonly path: string) {
    const st = statSync(path);
    this.dev = st.dev;
    this.ino = st.ino;
  }

  /**
   * Whether the file this connection writes to is still the one at its path. SQLite keeps
   * writing to a deleted or replaced file's inode, and everything written there is lost at
   * the next start-up, so such writes are refused.
   */
  problem(): string | null {
    try {
      const st = statSync(this.path);
      if (st.ino !== this.ino || st.dev !== this.dev) return `the database file ${this.path} was replaced`;
      return null;
    } catch {
      return `the database file ${this.path} was removed`;
    }
  }
}

interface SyncWaiter {
  readonly then: (err: RegistryError | null) => void;
  readonly failed: (err: Error) => void;
}

/**
 * Makes every commit so far durable, off the event loop: fsync of the WAL file, which is
 * what synchronous=FULL does after each commit. One fsync covers all the commits before it.
 */
export class WalSync {
  private walFd: number | null = null;
  private inFlight = 0;
  /** Durable batches committed while an fsync runs: answered by the next one. */
  private waiters: SyncWaiter[] = [];
  private done: (() => void) | null = null;
  /**
   * Set for good when an fsync of the WAL fails: the kernel may have dropped the pages it could
   * not write, so a later fsync that succeeds proves nothing about them, and a grant answered
   * after it could vanish in a crash (PostgreSQL stops for the same reason). Every write is
   * refused until the registry is restarted and SQLite recovers from what is on disk.
   */
  failure: string | null = null;

  /** `file` null: in memory, nothing to make durable. */
  constructor(private readonly file: DatabaseFile | null, private readonly fsync: Fsync) {}

  /** Calls `then` once every commit so far is on disk, or with why it could not be made so. */
  sync(then: (err: RegistryError | null) => void): void {
    const failed = (err: Error): void => {
      const fault = `the database's log could not be synced to disk (${err.message})`;
      this.failure = `${fault}; writes are refused until the registry is restarted`;
      then(new RegistryError('unavailable', fault, { cause: err }));
    };
    let fd: number | null;
    try {
      fd = this.descriptor();
    } catch (e) {
      return failed(e instanceof Error ? e : new Error(String(e)));
    }
    if (fd === null) return then(null); // in memory: nothing to make durable
    // One fsync at a time, shared: it covers every commit made before it started, so the
    // batches that commit while it runs wait for the next one, which they all share.
    this.waiters.push({ then, failed });
    if (this.inFlight === 0) this.start(fd);
  }

  private start(fd: number): void {
    const round = this.waiters;
    this.waiters = [];
    this.inFlight++;
    this.fsync(fd, (err) => {
      this.inFlight--;
      for (const w of round) {
        if (err) w.failed(err);
        else w.then(null);
      }
      if (this.waiters.length > 0) this.start(fd);
      else if (this.inFlight === 0) this.done?.();
    });
  }

  private descriptor(): number | null {
    if (this.walFd !== null || !this.file) return this.walFd;
    this.walFd = openSync(`${this.file.path}-wal`, 'r');
    // The WAL file's directory entry must be durable too (once).
    const dir = openSync(dirname(this.file.path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return this.walFd;
  }

  /** Waits for the fsync running, then closes the WAL's descriptor. */
  async close(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((resolve) => { this.done = resolve; });
    if (this.walFd !== null) closeSync(this.walFd);
    this.walFd = null;
  }
}
