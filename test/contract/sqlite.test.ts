/** The conformance suite (test/contract/suite.ts) on SQLite, and what only SQLite's file shows. */
import { conformance } from './suite.js';
import { stickyLookup } from './holder-keys.js';
import { poolSyncRefusal } from './registry.js';

conformance('sqlite');
poolSyncRefusal();
stickyLookup();
