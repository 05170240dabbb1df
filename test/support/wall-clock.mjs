// Test preload (node --import): this process's wall clock runs WALL_OFFSET_MS away from the
// machine's and is stepped by WALL_STEP_MS (default: an hour back) at every SIGUSR2. Both
// Date.now() and `new Date()` follow it (node-cron, for one, reads `new Date()`); the
// monotonic clock (process.hrtime, performance.now) is left alone, as an NTP step leaves it.
const RealDate = globalThis.Date;
let offset = Number(process.env.WALL_OFFSET_MS ?? 0);
const step = Number(process.env.WALL_STEP_MS ?? -3_600_000);

class SteppedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(RealDate.now() + offset);
    else super(...args);
  }
  static now() {
    return RealDate.now() + offset;
  }
}
globalThis.Date = SteppedDate;
process.on('SIGUSR2', () => {
  offset += step;
});
