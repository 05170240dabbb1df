/** Structured JSON logs (pino). Tokens never reach a log: requests are logged field by field. */
import { pino } from 'pino';
import type { Logger } from 'pino';
import { systemTimeSource } from './clock.js';
import type { LogLevel } from './config.js';
import type { RegistryEvent } from './registry.js';

export type { Logger };

/** Longest a log line waits in the buffer before it is written. */
export const LOG_FLUSH_MS = 200;

/**
 * Asynchronous, buffered stdout: each write is a trip through libuv's thread pool, which cost
 * a tenth of an allocate+release's CPU when every line (or every few) had its own. Info and
 * debug lines are written 8 KB at a time, or LOG_FLUSH_MS after they were logged when fewer
 * come; a warning or an error is written at once (with whatever waited before it), `flushSync`
 * writes everything now, and the process's exit writes what is left.
 */
export function stdoutDestination(): pino.DestinationStream & { flushSync(): void } {
  const dest = pino.destination({ dest: 1, sync: false, minLength: 8 * 1024, periodicFlush: LOG_FLUSH_MS });
  process.on('exit', () => {
    try {
      dest.flushSync();
    } catch {
      // stdout is gone (a closed pipe): nothing more can be said
    }
  });
  return {
    write(line: string): void {
      dest.write(line);
      // Lines begin with their level (see createLogger's formatter).
      if (!line.startsWith('{"level":"info"') && !line.startsWith('{"level":"debug"') && !line.startsWith('{"level":"trace"')) dest.flush();
    },
    flushSync: () => dest.flushSync(),
  };
}

/**
 * pino's isoTime, formatted once a millisecond: the lines of one batch of answers share their
 * millisecond, and formatting a Date was a percent of an allocate+release's CPU.
 */
export function isoTimeOncePerMs(now: () => number = systemTimeSource.wall): () => string {
  let lastMs = Number.NaN;
  let last = '';
  return () => {
    const ms = now();
    if (ms !== lastMs) {
      lastMs = ms;
      last = `,"time":"${new Date(ms).toISOString()}"`;
    }
    return last;
  };
}

export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  const opts = {
    level,
    // The pid on every line: under `npm start` it is the process to send SIGHUP to.
    base: { service: 'asg-id-registry', pid: process.pid },
    timestamp: isoTimeOncePerMs(),
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(opts, destination) : pino(opts);
}

/** One line per ownership change and per sweep; renewals only at debug. */
export function logRegistryEvent(log: Logger, e: RegistryEvent): void {
  switch (e.type) {
    case 'ownership':
      log.info({ event: e.event, identifier: e.identifier, client_id: e.clientId, epoch: e.epoch }, `ownership ${e.event}`);
      return;
    case 'renewed':
      log.debug({ identifier: e.identifier, client_id: e.clientId }, 'liveness');
      return;
    case 'holder_conflict':
      // The reason, never a key: the request's key is not in the event.
      log.warn({ identifier: e.identifier, client_id: e.clientId, reason: e.reason },
        'holder conflict: a second claimant presents a client id that holds a lease under another key; refused');
      return;
    case 'sweep': {
      const fields = { reclaimed: e.reclaimed, expired: e.expired, leased: e.leased, held: e.held, reason: e.reason, forced: e.forced, duration_ms: e.durationMs };
      if (e.held) log.warn(fields, 'reaper held by the mass-expiry guard');
      else if (e.reclaimed > 0 || e.forced) log.info(fields, 'reaper sweep');
      else log.debug(fields, 'reaper sweep');
      return;
    }
    case 'clock_step':
      log.warn({ step_ms: e.stepMs }, 'the wall clock was stepped; registry time is unaffected, but the reaper will not reclaim under a mass expiry for a TTL');
      return;
    case 'pool_synced':
      log.info({ ...e.result }, 'pool synced');
      return;
    case 'aws_event': {
      const fields = { aws_event: e.eventType, outcome: e.outcome, event_id: e.eventId, instance_id: e.instanceId, identifier: e.identifier, early_ms: e.earlyMs };
      if (e.outcome === 'released' || e.outcome === 'noted') log.info(fields, `aws event ${e.outcome}`);
      else log.debug(fields, `aws event ${e.outcome}`);
      return;
    }
  }
}
