/**
 * The conformance suite: what every engine must do, written once and run once per engine
 * (test/contract/sqlite.test.ts, test/contract/postgres.test.ts), each test on a fresh
 * database of that engine (test/support/engines.ts). A new engine gets its own
 * `<engine>.test.ts` calling `conformance`, and passes or does not ship.
 */
import type { EngineName } from '../support/engines.js';
import { useEngine } from '../support/engines.js';
import { awsEvents } from './aws-events.js';
import { fence } from './fence.js';
import { holderKeys, stickyIdentity, watermark } from './holder-keys.js';
import { httpApi } from './http-api.js';
import { historyLong, historyPaged } from './http-history.js';
import { registry } from './registry.js';
import { safety } from './safety.js';
import { storeRules } from './store-rules.js';

export function conformance(engine: EngineName): void {
  describe(`[${engine}]`, () => {
    useEngine(engine);
    storeRules();
    registry();
    safety();
    fence();
    holderKeys();
    watermark();
    stickyIdentity();
    httpApi();
    historyPaged();
    historyLong();
    awsEvents();
  });
}
