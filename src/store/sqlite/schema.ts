/**
 * Migrations, applied in order; `PRAGMA user_version` records how many have run.
 * Never edit a shipped migration: add the next one.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE identifiers (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    pool_order   INTEGER NOT NULL,
    retired      INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1)),
    epoch        INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    client_id    TEXT,
    allocated_at INTEGER,
    last_seen    INTEGER,
    available_at INTEGER NOT NULL DEFAULT 0,
    CHECK ((client_id IS NULL) = (allocated_at IS NULL)),
    CHECK ((client_id IS NULL) = (last_seen IS NULL))
  ) STRICT;

  -- One client, one identifier: the database refuses a second holder even from a buggy caller.
  CREATE UNIQUE INDEX identifiers_by_client ON identifiers (client_id) WHERE client_id IS NOT NULL;
  -- Allocation: the allocatable identifier free the longest, never-used (available_at 0) first in pool order.
  CREATE INDEX identifiers_allocatable ON identifiers (available_at, pool_order) WHERE client_id IS NULL AND retired = 0;
  -- The reaper walks leases by age instead of scanning the pool.
  CREATE INDEX identifiers_by_last_seen ON identifiers (last_seen) WHERE client_id IS NOT NULL;
  CREATE INDEX identifiers_by_order ON identifiers (pool_order);

  -- Fencing tokens never go back, and every new grant takes a new one.
  CREATE TRIGGER identifiers_epoch_never_decreases BEFORE UPDATE OF epoch ON identifiers
  WHEN NEW.epoch < OLD.epoch
  BEGIN SELECT RAISE(ABORT, 'epoch may not decrease'); END;

  CREATE TRIGGER identifiers_grant_takes_new_epoch BEFORE UPDATE OF client_id ON identifiers
  WHEN OLD.client_id IS NULL AND NEW.client_id IS NOT NULL AND NEW.epoch <= OLD.epoch
  BEGIN SELECT RAISE(ABORT, 'a new grant must take a new epoch'); END;

  -- An identifier passes from one holder to another only through being free.
  CREATE TRIGGER identifiers_no_direct_handover BEFORE UPDATE OF client_id ON identifiers
  WHEN OLD.client_id IS NOT NULL AND NEW.client_id IS NOT NULL AND NEW.client_id <> OLD.client_id
  BEGIN SELECT RAISE(ABORT, 'an identifier may not pass between holders without being freed'); END;

  CREATE TABLE history (
    id            INTEGER PRIMARY KEY,
    identifier_id INTEGER NOT NULL REFERENCES identifiers (id),
    at            INTEGER NOT NULL,
    event         TEXT    NOT NULL CHECK (event IN ('allocated', 'released', 'reclaimed', 'force_released', 'retired', 'restored')),
    client_id     TEXT,
    epoch         INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX history_by_identifier ON history (identifier_id, id);

  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) STRICT;
  `,
  `
  -- Every registry process beats here: the others see it is alive (start-up grace is for the
  -- service coming back, not for one process restarting while others serve) and when a VM
  -- last reached it (the guard holds reclaims when no VM has for a TTL).
  CREATE TABLE instances (
    id            TEXT    PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    fleet_seen_at INTEGER
  ) STRICT;
  -- The latest VM request any instance saw, kept when instances come and go.
  CREATE TABLE fleet (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seen_at INTEGER NOT NULL
  ) STRICT;

  -- Allocations refused for want of an identifier: the demand the guarded reaper must meet.
  CREATE TABLE refusals (
    client_id TEXT    NOT NULL,
    at        INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX refusals_by_at ON refusals (at);

  -- The guard counts reclaims over the last TTL, across sweeps and processes.
  CREATE INDEX history_by_event_at ON history (event, at);
  `,
  `
  -- /health's counts without a scan of the pool (a 1M pool took 190 ms on the event loop):
  -- the totals that change with a grant, a free or a retirement are kept by triggers; new rows
  -- are counted by the statement that adds them (the pool sync, an import: a trigger per
  -- inserted row tripled a 1M first start); cooling is counted through the allocatable index.
  CREATE TABLE pool_counts (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    total   INTEGER NOT NULL,
    leased  INTEGER NOT NULL,
    retired INTEGER NOT NULL
  ) STRICT;
  INSERT INTO pool_counts (id, total, leased, retired)
    SELECT 1, count(*), count(client_id), coalesce(sum(client_id IS NULL AND retired = 1), 0) FROM identifiers;
  CREATE TRIGGER pool_counts_update AFTER UPDATE OF client_id, retired ON identifiers
  BEGIN
    UPDATE pool_counts SET
      leased = leased + (NEW.client_id IS NOT NULL) - (OLD.client_id IS NOT NULL),
      retired = retired + (NEW.client_id IS NULL AND NEW.retired = 1) - (OLD.client_id IS NULL AND OLD.retired = 1);
  END;
  CREATE TRIGGER pool_counts_delete AFTER DELETE ON identifiers
  BEGIN
    UPDATE pool_counts SET total = total - 1,
      leased = leased - (OLD.client_id IS NOT NULL),
      retired = retired - (OLD.client_id IS NULL AND OLD.retired = 1);
  END;

  -- Filtered listings walk an index of just their rows in pool order, instead of the whole
  -- pool's order index until a page of matches turns up.
  CREATE INDEX identifiers_leased_by_order ON identifiers (pool_order, id) WHERE client_id IS NOT NULL;
  CREATE INDEX identifiers_unheld_by_order ON identifiers (pool_order, id) WHERE client_id IS NULL AND retired = 0;
  CREATE INDEX identifiers_retired_by_order ON identifiers (pool_order, id) WHERE retired = 1;
  `,
  `
  -- The guard counts only reclaims: an index of just those. The index of every event by time
  -- was written by every grant and release (each writes a history row) and read by nothing
  -- else; without it a durable allocate+release took 12 % less CPU (docs/adr/0009-history-indexes-only-the-reclaims-on-sqlite.md).
  DROP INDEX IF EXISTS history_by_event_at;
  CREATE INDEX history_reclaimed_at ON history (at) WHERE event = 'reclaimed';
  `,
  `
  -- The fence window announced to a holder is kept with its lease: the cool-down it was derived
  -- from, the longest announced during the lease (null: a lease granted before this was kept,
  -- until its next renewal). An identifier taken from its holder cools at least this long, so a
  -- lower REUSE_COOLDOWN_SECONDS (a restart, another process) never shortens a window announced.
  ALTER TABLE identifiers ADD COLUMN fence_cooldown_ms INTEGER CHECK (fence_cooldown_ms IS NULL OR fence_cooldown_ms >= 0);
  `,
  `
  -- A filtered page of free or cooling identifiers walks the pool order through an index that
  -- holds available_at as well, so whether a row is free or cooling now is read from the index,
  -- not from each row: the walk past 250,000 free ones to the first cooling one read every row.
  -- (The allocatable index, by available_at, gives them in the wrong order: a sort of them all.)
  DROP INDEX IF EXISTS identifiers_unheld_by_order;
  CREATE INDEX identifiers_unheld_by_order_at ON identifiers (pool_order, id, available_at) WHERE client_id IS NULL AND retired = 0;
  `,
  `
  -- Who holds a lease, and what the next holder must know (docs/api.md, "Holder keys",
  -- "Sticky identity", "Watermark"; docs/_pending/holder.md).
  -- The hash of the key a lease was granted with (never the key), and what an attested claim
  -- proved about the instance (canonical JSON): the holder's, gone with the lease.
  ALTER TABLE identifiers ADD COLUMN key_hash TEXT CHECK (key_hash IS NULL OR client_id IS NOT NULL);
  ALTER TABLE identifiers ADD COLUMN instance TEXT CHECK (instance IS NULL OR client_id IS NOT NULL);
  -- The highest watermark any holder sent: the identifier's, kept across holders, never lowered.
  ALTER TABLE identifiers ADD COLUMN watermark INTEGER CHECK (watermark IS NULL OR watermark BETWEEN 0 AND 9007199254740991);
  -- The client last granted the identifier, and when: a client that holds nothing gets it back
  -- (sticky identity) through the index, one lookup.
  ALTER TABLE identifiers ADD COLUMN last_client_id TEXT;
  ALTER TABLE identifiers ADD COLUMN last_granted_at INTEGER;
  UPDATE identifiers SET last_client_id = client_id, last_granted_at = allocated_at WHERE client_id IS NOT NULL;
  UPDATE identifiers SET
    last_client_id = (SELECT h.client_id FROM history h WHERE h.identifier_id = identifiers.id AND h.event = 'allocated' ORDER BY h.id DESC LIMIT 1),
    last_granted_at = (SELECT h.at FROM history h WHERE h.identifier_id = identifiers.id AND h.event = 'allocated' ORDER BY h.id DESC LIMIT 1)
  WHERE client_id IS NULL AND epoch > 0;
  CREATE INDEX identifiers_by_last_client ON identifiers (last_client_id, last_granted_at) WHERE last_client_id IS NOT NULL;

  CREATE TRIGGER identifiers_watermark_never_decreases BEFORE UPDATE OF watermark ON identifiers
  WHEN OLD.watermark IS NOT NULL AND (NEW.watermark IS NULL OR NEW.watermark < OLD.watermark)
  BEGIN SELECT RAISE(ABORT, 'watermark may not decrease'); END;
  `,
  `
  -- AWS events (docs/operations.md, "AWS events"): a lease can end because AWS said its
  -- instance terminated, and a history entry can note that it is about to. SQLite cannot
  -- change a CHECK in place: the history table is rebuilt with the wider one, rows and ids kept.
  CREATE TABLE history_new (
    id            INTEGER PRIMARY KEY,
    identifier_id INTEGER NOT NULL REFERENCES identifiers (id),
    at            INTEGER NOT NULL,
    event         TEXT    NOT NULL CHECK (event IN ('allocated', 'released', 'reclaimed', 'force_released', 'retired', 'restored', 'terminated', 'terminating')),
    client_id     TEXT,
    epoch         INTEGER NOT NULL
  ) STRICT;
  INSERT INTO history_new (id, identifier_id, at, event, client_id, epoch) SELECT id, identifier_id, at, event, client_id, epoch FROM history;
  DROP TABLE history;
  ALTER TABLE history_new RENAME TO history;
  CREATE INDEX history_by_identifier ON history (identifier_id, id);
  CREATE INDEX history_reclaimed_at ON history (at) WHERE event = 'reclaimed';

  -- EventBridge delivers at least once: the ids of the events acted on, so a redelivery
  -- changes nothing; kept a day (pruned by age through the index).
  CREATE TABLE aws_events (
    id TEXT    PRIMARY KEY,
    at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX aws_events_by_at ON aws_events (at);
  `,
];
