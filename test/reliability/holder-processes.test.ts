/**
 * Two VMs presenting one client id, each with its own key, reach two registry processes that
 * share one database file, at the same moment: the store, not either process's memory, decides
 * which one holds, and the other is refused, round after round.
 */
import { expect } from 'chai';
import { tempDir } from '../support/helpers.js';
import { json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

type Body = Record<string, unknown>;
const asBody = (b: unknown): Body => (typeof b === 'object' && b !== null ? Object.fromEntries(Object.entries(b)) : {});
const codeOf = (b: unknown): unknown => asBody(asBody(b)['error'])['code'];

const KEYS = ['key-one-0123456789abcdef', 'key-two-0123456789abcdef'] as const;

describe('two claimants of one client id through two registry processes on one database file', function () {
  this.timeout(120_000);
  let t: ReturnType<typeof tempDir>;
  const running: RunningRegistry[] = [];
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((r) => r.stop()));
    t.cleanup();
  });

  it('never both hold: one is granted, the other is told holder_conflict, and neither key works for the other', async () => {
    const env = { REAPER_SCHEDULE: '0 0 0 1 1 *', STARTUP_GRACE_SECONDS: '0', LEASE_TTL_SECONDS: '60', REUSE_COOLDOWN_SECONDS: '0' };
    for (let i = 0; i < 2; i++) running.push(await startProcess({ dir: t.dir, pool: 'a\nb\nc\n', env }));
    const [p1, p2] = running;
    if (!p1 || !p2) throw new Error('no processes');
    const wins = [0, 0];
    for (let round = 0; round < 30; round++) {
      // Each round, the claimants swap processes, and in some the second sends no key at all.
      const flip = round % 2;
      const bodies = [
        { client_id: 'vm-x', key: KEYS[0] },
        round % 3 === 2 ? { client_id: 'vm-x' } : { client_id: 'vm-x', key: KEYS[1] },
      ];
      const answers: { status: number; body: unknown }[] = await Promise.all([
        json((flip ? p2 : p1).base, 'POST', '/allocate', bodies[0]),
        json((flip ? p1 : p2).base, 'POST', '/allocate', bodies[1]),
      ]);
      const granted: number[] = answers.map((a, i) => (a.status === 200 ? i : -1)).filter((i) => i >= 0);
      expect(granted, `round ${round}: ${JSON.stringify(answers.map((a) => [a.status, a.body]))}`).to.have.length(1);
      const winner = granted[0] ?? 0;
      const loser = 1 - winner;
      wins[winner] = (wins[winner] ?? 0) + 1;
      const refused = answers[loser];
      expect(refused?.status).to.equal(409);
      expect(codeOf(refused?.body)).to.equal('holder_conflict');
      const lease = asBody(answers[winner]?.body);
      expect(lease['client_id']).to.equal('vm-x');
      // The loser's liveness and release, through either process: not its lease, and nothing moves.
      for (const p of [p1, p2]) {
        for (const path of ['/liveness', '/release']) {
          const r = await json(p.base, 'POST', path, { ...bodies[loser], identifier: lease['identifier'], epoch: lease['epoch'] });
          expect(r.status, `round ${round}: ${path} by the claimant not granted`).to.equal(409);
          expect(codeOf(r.body)).to.equal('not_owner');
        }
      }
      const seen = asBody((await json(p1.base, 'GET', `/identifier/${String(lease['identifier'])}`)).body);
      expect(seen).to.include({ client_id: 'vm-x', epoch: lease['epoch'], last_seen: lease['last_seen'] });
      // The winner gives it back, with its key, through the other process.
      const freed = await json((winner === flip ? p1 : p2).base, 'POST', '/release', { ...bodies[winner], identifier: lease['identifier'] });
      expect(freed.status, JSON.stringify(freed.body)).to.equal(200);
    }
    expect(wins.every((n) => n > 0), `each claimant must have won some rounds: ${wins.join('/')}`).to.equal(true);
  });
});
