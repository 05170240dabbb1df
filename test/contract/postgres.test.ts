/** The conformance suite (test/contract/suite.ts) on PostgreSQL (the run's shared server: test/support/postgres.ts). */
import { conformance } from './suite.js';

conformance('postgres');
