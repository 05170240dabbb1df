// Test preload (node --import): this process's wall clock runs WALL_OFFSET_MS away from the
// machine's and is stepped by WALL_STEP_MS (default: an hour back) at every SIGUSR2.
const realNow = Date.now.bind(Date);
let offset = Number(process.env.WALL_OFFSET_MS ?? 0);
const step = Number(process.env.WALL_STEP_MS ?? -3_600_000);
Date.now = () => realNow() + offset;
process.on('SIGUSR2', () => {
  offset += step;
});
