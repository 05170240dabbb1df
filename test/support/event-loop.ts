/**
 * How long this process's event loop was held: over the gaps between the ticks of a 1 ms
 * timer, the longest time the loop was busy AND this process was on a CPU. Wall time alone
 * would count the time this process waited for one of the machine's two cores, which the
 * other processes of a busy machine cause (a load average of 15 stretched 1 ms of work to
 * 40), and which no change of ours could fix; CPU time alone would count the listing's
 * worker threads, which run beside the loop without holding it. A gap's hold is the least of
 * the two: a loop that runs code for 30 ms is on a CPU and busy for 30 ms of its gap.
 */
import { performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import vm from 'node:vm';

v8.setFlagsFromString('--expose-gc');
/** A full collection, run before each measured run: the garbage earlier tests left in this process is not the work's own. */
const collect = vm.runInNewContext('gc') as () => void;

export interface Held {
  /** The longest hold, in ms: the most a gap between two ticks had of both busy loop and CPU. */
  readonly ms: number;
  /** That gap's wall time, busy time and the process's CPU time in it, in ms. */
  readonly wall: number;
  readonly busy: number;
  readonly cpu: number;
}

/** Starts watching; the function returned stops and says the longest hold seen. */
export function watchEventLoop(): () => Held {
  let last = performance.now();
  let lastElu = performance.eventLoopUtilization();
  let lastCpu = process.cpuUsage();
  let worst: Held = { ms: 0, wall: 0, busy: 0, cpu: 0 };
  const timer = setInterval(() => {
    const t = performance.now();
    const elu = performance.eventLoopUtilization();
    const cpuNow = process.cpuUsage();
    const busy = performance.eventLoopUtilization(elu, lastElu).active;
    const cpu = (cpuNow.user - lastCpu.user + cpuNow.system - lastCpu.system) / 1000;
    const ms = Math.min(busy, cpu);
    if (ms > worst.ms) worst = { ms, wall: t - last, busy, cpu };
    last = t;
    lastElu = elu;
    lastCpu = cpuNow;
  }, 1);
  return () => {
    clearInterval(timer);
    return worst;
  };
}

/**
 * The longest hold of the event loop while `work` runs, the least of `runs` runs: a hold that
 * the work causes shows in every run, a pause of the machine (a collection of the heap the
 * whole test run shares) in one now and then.
 */
export async function longestHold(work: () => Promise<void>, runs = 5): Promise<{ ms: number; each: Held[]; shown: string }> {
  const each: Held[] = [];
  for (let i = 0; i < runs; i++) {
    collect();
    const stop = watchEventLoop();
    try {
      await work();
    } finally {
      each.push(stop());
    }
  }
  const shown = each.map((x) => `${x.ms.toFixed(1)} ms (gap ${x.wall.toFixed(1)}, busy ${x.busy.toFixed(1)}, cpu ${x.cpu.toFixed(1)})`).join('; ');
  return { ms: Math.min(...each.map((h) => h.ms)), each, shown };
}
