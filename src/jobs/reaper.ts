/** Runs the registry's sweep on the node-cron schedule. */
import cron from 'node-cron';
import type { ReapResult } from '../registry.js';

export interface ReaperJob {
  readonly schedule: string;
  readonly sweep: () => Promise<ReapResult>;
  readonly onError: (e: unknown) => void;
}

/** Starts the schedule; returns the function that stops it. */
export function startReaper(job: ReaperJob): () => void {
  const task = cron.schedule(
    job.schedule,
    async function reaperTick() {
      try {
        await job.sweep();
      } catch (e) {
        job.onError(e);
      }
    },
    { name: 'reaper', noOverlap: true },
  );
  return function stopReaper() {
    void task.destroy();
  };
}
