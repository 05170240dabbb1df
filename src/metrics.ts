/**
 * Prometheus metrics (prom-client). Counters follow the registry's events and the HTTP
 * requests; the pool and reaper gauges are read from the registry when scraped, so they are
 * never stale and cost nothing between scrapes.
 */
import client from 'prom-client';
import type { Health, RegistryEvent } from './registry.js';

const P = 'asg_id_registry_';

export interface MetricsOptions {
  /** CPU, memory, event loop, GC of this process (once per process: they install monitors). */
  readonly processMetrics?: boolean;
}

export class Metrics {
  readonly register = new client.Registry();
  private readonly allocations: client.Counter;
  private readonly renewals: client.Counter;
  private readonly releases: client.Counter<'kind'>;
  private readonly reclaims: client.Counter;
  private readonly poolChanges: client.Counter<'event'>;
  private readonly httpErrors: client.Counter<'status' | 'code'>;
  private readonly httpDuration: client.Histogram<'method' | 'route' | 'status'>;
  private readonly reaperRuns: client.Counter<'result'>;
  private readonly holderConflicts: client.Counter<'reason'>;
  private readonly attestationRefusals: client.Counter<'reason'>;
  private readonly awsEvents: client.Counter<'type' | 'outcome'>;
  private readonly awsEarly: client.Histogram;

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.register];
    this.allocations = new client.Counter({ name: `${P}allocations_total`, help: 'New grants of an identifier to a client', registers });
    this.renewals = new client.Counter({ name: `${P}renewals_total`, help: 'Successful liveness renewals', registers });
    this.releases = new client.Counter({
      name: `${P}releases_total`, help: 'Identifiers freed by their owner (kind=owner), by an operator (kind=forced) or because AWS said their instance terminated (kind=terminated)', labelNames: ['kind'], registers,
    });
    this.reclaims = new client.Counter({ name: `${P}reclaims_total`, help: 'Leases reclaimed by the reaper', registers });
    this.poolChanges = new client.Counter({ name: `${P}pool_changes_total`, help: 'Identifiers retired or restored by a pool sync', labelNames: ['event'], registers });
    this.httpErrors = new client.Counter({ name: `${P}http_errors_total`, help: 'Error responses by status and error code', labelNames: ['status', 'code'], registers });
    this.httpDuration = new client.Histogram({
      name: `${P}http_request_duration_seconds`,
      help: 'Request latency by route',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.reaperRuns = new client.Counter({
      name: `${P}reaper_runs_total`, help: 'Reaper sweeps by result (reclaimed, idle, held, grace)', labelNames: ['result'], registers,
    });
    this.holderConflicts = new client.Counter({
      name: `${P}holder_conflicts_total`,
      help: 'Allocates refused (409 holder_conflict) because their client id holds a lease under another key (other_key), under a key while they sent none (no_key), or without one while they sent one (key_on_keyless): two claimants of one client id',
      labelNames: ['reason'], registers,
    });
    this.attestationRefusals = new client.Counter({
      name: `${P}attestation_refusals_total`,
      help: 'Allocates refused because their identity document did not verify (401) or did not match the claim (403), by reason',
      labelNames: ['reason'], registers,
    });
    this.awsEvents = new client.Counter({
      name: `${P}aws_events_total`,
      help: 'AWS events received on POST /events/aws by type (terminate_successful, state_change, spot_interruption, terminate_lifecycle, unknown) ' +
        'and outcome (released, noted, no_lease, duplicate, ignored, invalid)',
      labelNames: ['type', 'outcome'], registers,
    });
    this.awsEarly = new client.Histogram({
      name: `${P}aws_early_release_seconds`,
      help: 'Identifiers released on an AWS event: how much sooner they were allocatable than the reaper would have made them (last liveness + TTL + cool-down)',
      buckets: [0, 5, 15, 30, 60, 90, 120, 180, 300, 600, 1800],
      registers,
    });
    for (const reason of ['other_key', 'no_key', 'key_on_keyless']) this.holderConflicts.inc({ reason }, 0);
    for (const reason of ['missing', 'unreadable', 'unknown_signer', 'bad_signature', 'account', 'region', 'instance_id', 'source_address']) {
      this.attestationRefusals.inc({ reason }, 0);
    }
    for (const kind of ['owner', 'forced', 'terminated']) this.releases.inc({ kind }, 0);
    for (const result of ['reclaimed', 'idle', 'held', 'grace']) this.reaperRuns.inc({ result }, 0);
    if (opts.processMetrics) client.collectDefaultMetrics({ register: this.register, prefix: P });
  }

  /** Pool and reaper gauges, read from `snapshot` at scrape time (one read per scrape). Call once. */
  watch(snapshot: () => Promise<Health>): this {
    const registers = [this.register];
    // A sick database must not take /metrics down with it: the gauges then keep their last
    // values, database_healthy says 0, and the process metrics still come through.
    let pending: Promise<Health | null> | null = null;
    let healthy = 1;
    const read = (): Promise<Health | null> => {
      pending ??= snapshot().then(
        (h) => { healthy = 1; return h; },
        () => { healthy = 0; return null; },
      ).finally(() => { pending = null; });
      return pending;
    };
    new client.Gauge({
      name: `${P}database_healthy`, help: '1 while the database can be read and written (as /health), 0 otherwise', registers,
      async collect() {
        await read();
        this.set(healthy);
      },
    });
    new client.Gauge({
      name: `${P}pool_identifiers`, help: 'Identifiers by status', labelNames: ['status'], registers,
      async collect() {
        const h = await read();
        if (h) for (const [status, n] of Object.entries(h.pool)) if (status !== 'total') this.set({ status }, n);
      },
    });
    new client.Gauge({
      name: `${P}oldest_lease_age_seconds`, help: 'Seconds since the least recent liveness among leased identifiers (0 with none)', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.oldestLastSeen === null ? 0 : Math.max(0, (h.nowMs - h.oldestLastSeen) / 1000));
      },
    });
    new client.Gauge({
      name: `${P}reaper_last_run_timestamp_seconds`, help: 'When the reaper last swept (0: never)', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.reaper.lastRunAt === null ? 0 : h.reaper.lastRunAt / 1000);
      },
    });
    new client.Gauge({
      name: `${P}reaper_last_reclaimed`, help: 'Leases reclaimed by the last sweep', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.reaper.lastReclaimed);
      },
    });
    new client.Gauge({
      name: `${P}reaper_held`, help: '1 while the mass-expiry guard holds the reaper (health: degraded)', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.reaper.held ? 1 : 0);
      },
    });
    new client.Gauge({
      name: `${P}pool_reload_failed`, help: '1 while the last pool reload (SIGHUP) stands refused or failed (health: degraded)', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.poolProblem === null ? 0 : 1);
      },
    });
    new client.Gauge({
      name: `${P}uptime_seconds`, help: 'Seconds since the registry started', registers,
      async collect() {
        const h = await read();
        if (h) this.set(h.uptimeMs / 1000);
      },
    });
    return this;
  }

  onRegistryEvent(e: RegistryEvent): void {
    switch (e.type) {
      case 'ownership':
        if (e.event === 'allocated') this.allocations.inc();
        else if (e.event === 'released') this.releases.inc({ kind: 'owner' });
        else if (e.event === 'force_released') this.releases.inc({ kind: 'forced' });
        else if (e.event === 'terminated') this.releases.inc({ kind: 'terminated' });
        else if (e.event === 'terminating') return;
        else if (e.event === 'reclaimed') this.reclaims.inc();
        else this.poolChanges.inc({ event: e.event });
        return;
      case 'renewed':
        this.renewals.inc();
        return;
      case 'holder_conflict':
        this.holderConflicts.inc({ reason: e.reason });
        return;
      case 'sweep':
        this.reaperRuns.inc({ result: e.held ? 'held' : e.reason !== null ? 'grace' : e.reclaimed > 0 ? 'reclaimed' : 'idle' });
        return;
      case 'pool_synced':
        return;
      case 'aws_event':
        this.awsEvents.inc({ type: e.eventType, outcome: e.outcome });
        if (e.earlyMs !== null) this.awsEarly.observe(Math.max(0, e.earlyMs) / 1000);
        return;
    }
  }

  /** An attested claim refused: `reason` is one of aws/identity.ts's fixed words. */
  onAttestationRefused(reason: string): void {
    this.attestationRefusals.inc({ reason });
  }

  /** An AWS event refused as malformed (400): counted by the type it claimed, when it got that far. */
  onAwsEventInvalid(type: string): void {
    this.awsEvents.inc({ type, outcome: 'invalid' });
  }

  /** Label children by "method route status": resolving labels on every request is not free. */
  private readonly durationChildren = new Map<string, client.Histogram.Internal<'method' | 'route' | 'status'>>();

  onRequest(method: string, route: string, status: number, seconds: number, errorCode: string | null): void {
    const key = `${method} ${route} ${status}`;
    let child = this.durationChildren.get(key);
    if (!child) {
      child = this.httpDuration.labels({ method, route, status: String(status) });
      this.durationChildren.set(key, child);
    }
    child.observe(seconds);
    if (errorCode !== null) this.httpErrors.inc({ status: String(status), code: errorCode });
  }

  get contentType(): string {
    return this.register.contentType;
  }

  render(): Promise<string> {
    return this.register.metrics();
  }
}
