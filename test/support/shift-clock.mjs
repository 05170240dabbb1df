// node --import ./test/support/shift-clock.mjs: this process's wall clock reads
// IDREG_TEST_CLOCK_SHIFT_MS off (as a host whose clock is wrong would), monotonic time as is.
// For the tests of instances on hosts whose clocks disagree.
const shift = Number(process.env.IDREG_TEST_CLOCK_SHIFT_MS ?? '0');
if (!Number.isFinite(shift)) throw new Error('IDREG_TEST_CLOCK_SHIFT_MS: not a number');
const RealDate = Date;
const realNow = RealDate.now.bind(RealDate);
class ShiftedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(realNow() + shift);
    else super(...args);
  }
  static now() {
    return realNow() + shift;
  }
}
globalThis.Date = ShiftedDate;
