import { expect } from 'chai';
import { ConfigError, loadConfig } from '../src/config.js';

function failure(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error(`expected ${JSON.stringify(env)} to be refused`);
}

describe('config', () => {
  it('has the defaults the README Configuration table lists', () => {
    const c = loadConfig({});
    expect(c).to.include({
      host: '127.0.0.1', port: 8080, dbPath: './data/registry.db', poolFile: 'seed/identifiers.txt',
      leaseTtlSeconds: 90, reaperSchedule: '*/10 * * * * *', reuseCooldownSeconds: 90, startupGraceSeconds: 90,
      reaperMaxFraction: 0.5, reaperMinHold: 10, logLevel: 'info', historyRetentionDays: 90,
    });
    expect(c.agentTokens).to.deep.equal([]);
    expect(Object.isFrozen(c)).to.equal(true);
  });

  it('cool-down and grace default to the TTL', () => {
    const c = loadConfig({ LEASE_TTL_SECONDS: '30' });
    expect(c.reuseCooldownSeconds).to.equal(30);
    expect(c.startupGraceSeconds).to.equal(30);
    expect(loadConfig({ LEASE_TTL_SECONDS: '30', REUSE_COOLDOWN_SECONDS: '0' }).reuseCooldownSeconds).to.equal(0);
  });

  it('durations in seconds become whole milliseconds exactly, up to three decimals', () => {
    const c = loadConfig({ LEASE_TTL_SECONDS: '2.001', REUSE_COOLDOWN_SECONDS: '0.5', STARTUP_GRACE_SECONDS: '7.25' });
    // 2.001 * 1000 is 2000.9999999999998 in floating point: read from the digits, it is 2001.
    expect([c.leaseTtlMs, c.reuseCooldownMs, c.startupGraceMs]).to.deep.equal([2001, 500, 7250]);
    expect(c.leaseTtlSeconds).to.equal(2.001);
    const d = loadConfig({ LEASE_TTL_SECONDS: '30', REUSE_COOLDOWN_SECONDS: '1.0000' });
    expect([d.leaseTtlMs, d.reuseCooldownMs, d.startupGraceMs]).to.deep.equal([30_000, 1000, 30_000]);
    // Trailing zeros past the third decimal are still whole milliseconds.
    expect(loadConfig({ LEASE_TTL_SECONDS: '2.0010000' }).leaseTtlMs).to.equal(2001);
  });

  for (const name of ['LEASE_TTL_SECONDS', 'REUSE_COOLDOWN_SECONDS', 'STARTUP_GRACE_SECONDS']) {
    for (const value of ['2.0005', '0.0001', '90.0000001', '1e3', `${30 * 24 * 3600}.001`]) {
      it(`refuses ${name}=${value}: finer than a millisecond, or not representable (one line naming it)`, () => {
        const e = failure({ [name]: value });
        expect(e.variable).to.equal(name);
        expect(e.message.startsWith(`${name}: `)).to.equal(true);
        expect(e.message).to.not.include('\n');
      });
    }
  }

  it('HISTORY_RETENTION_DAYS: whole days, 0 keeps history forever', () => {
    expect(loadConfig({ HISTORY_RETENTION_DAYS: '0' }).historyRetentionDays).to.equal(0);
    expect(loadConfig({ HISTORY_RETENTION_DAYS: '365' }).historyRetentionDays).to.equal(365);
  });

  it('splits token lists for rotation', () => {
    const c = loadConfig({ AGENT_TOKENS: 'agent-token-aaaaaaaa, agent-token-bbbbbbbb', ADMIN_TOKENS: 'admin-token-cccccccc' });
    expect(c.agentTokens).to.deep.equal(['agent-token-aaaaaaaa', 'agent-token-bbbbbbbb']);
    expect(c.adminTokens).to.deep.equal(['admin-token-cccccccc']);
  });

  const bad: Array<[string, string]> = [
    ['PORT', '80a'], ['PORT', '70000'], ['PORT', '-1'],
    ['LEASE_TTL_SECONDS', 'soon'], ['LEASE_TTL_SECONDS', '0'], ['LEASE_TTL_SECONDS', '-5'],
    ['REUSE_COOLDOWN_SECONDS', '-1'], ['STARTUP_GRACE_SECONDS', 'x'],
    ['REAPER_SCHEDULE', 'every ten seconds'], ['REAPER_SCHEDULE', '99 * * * *'],
    ['REAPER_MAX_FRACTION', '1.5'], ['REAPER_MAX_FRACTION', '0'], ['REAPER_MIN_HOLD', '2.5'],
    ['LOG_LEVEL', 'loud'], ['AGENT_TOKENS', 'short'], ['ADMIN_TOKENS', 'admin-token-cccccccc,,x'],
    ['DB_BUSY_TIMEOUT_MS', 'forever'], ['HISTORY_RETENTION_DAYS', '1.5'], ['HISTORY_RETENTION_DAYS', '-1'], ['HISTORY_RETENTION_DAYS', '36501'], ['AGENT_TOKENS', 'replace-me-agent-token-0000'], ['ADMIN_TOKENS', 'REPLACE-ME-admin-token-0000'],
    ['EVENT_TOKENS', 'short'], ['EVENT_TOKENS', 'event-token-cccccccc,'], ['EVENT_TOKENS', 'replace-me-event-token-0000'],
  ];
  for (const [name, value] of bad) {
    it(`refuses ${name}=${JSON.stringify(value)}, naming it on one line`, () => {
      const e = failure({ [name]: value });
      expect(e.variable).to.equal(name);
      expect(e.message.startsWith(`${name}: `)).to.equal(true);
      expect(e.message).to.not.include('\n');
    });
  }

  it('TLS: both files or neither', () => {
    expect(loadConfig({}).tls).to.equal(null);
    expect(loadConfig({ TLS_CERT_FILE: '/etc/r/cert.pem', TLS_KEY_FILE: '/etc/r/key.pem' }).tls).to.deep.equal({ certFile: '/etc/r/cert.pem', keyFile: '/etc/r/key.pem' });
    expect(failure({ TLS_CERT_FILE: '/etc/r/cert.pem' }).variable).to.equal('TLS_KEY_FILE');
    expect(failure({ TLS_KEY_FILE: '/etc/r/key.pem' }).variable).to.equal('TLS_CERT_FILE');
  });

  it('protected mode: a non-loopback HOST needs tokens or ALLOW_OPEN=true', () => {
    for (const host of ['0.0.0.0', '::', '10.0.0.5', 'registry.internal', '[::]']) {
      const e = failure({ HOST: host });
      expect(e.variable, host).to.equal('HOST');
      expect(e.message).to.include('ALLOW_OPEN=true').and.not.include('\n');
      expect(loadConfig({ HOST: host, ALLOW_OPEN: 'true' }).allowOpen).to.equal(true);
      expect(loadConfig({ HOST: host, AGENT_TOKENS: 'agent-token-aaaaaaaa' }).host).to.equal(host);
      expect(loadConfig({ HOST: host, ADMIN_TOKENS: 'admin-token-aaaaaaaa' }).host).to.equal(host);
      expect(failure({ HOST: host, ALLOW_OPEN: 'false' }).variable).to.equal('HOST');
    }
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) {
      expect(loadConfig({ HOST: host }).host, host).to.equal(host);
    }
    expect(failure({ ALLOW_OPEN: 'yes' }).variable).to.equal('ALLOW_OPEN');
  });

  it('DATABASE_URL selects PostgreSQL; without it SQLite stays the default', () => {
    expect(loadConfig({}).databaseUrl).to.equal(null);
    const url = 'postgres://registry:s3cret@db.internal:5432/idreg?sslmode=require';
    expect(loadConfig({ DATABASE_URL: url }).databaseUrl).to.equal(url);
    expect(loadConfig({ DATABASE_URL: 'postgresql://db.internal/idreg' }).databaseUrl).to.equal('postgresql://db.internal/idreg');
  });

  for (const value of ['mysql://u:s3cret@db/x', 'not a url s3cret', 'postgres://', 'sqlite:///data/registry.db']) {
    it(`refuses DATABASE_URL=${JSON.stringify(value)} without echoing it (it may hold a password)`, () => {
      const e = failure({ DATABASE_URL: value });
      expect(e.variable).to.equal('DATABASE_URL');
      expect(e.message).to.not.include('s3cret');
      expect(e.message).to.not.include('\n');
    });
  }

  it('reads EVENT_TOKENS, and refuses an event token that is also an agent or admin token', () => {
    expect(loadConfig({ EVENT_TOKENS: 'event-token-aaaaaaaa,event-token-bbbbbbbb' }).eventTokens).to.deep.equal(['event-token-aaaaaaaa', 'event-token-bbbbbbbb']);
    expect(loadConfig({}).eventTokens).to.deep.equal([]);
    expect(failure({ AGENT_TOKENS: 'same-token-0123456789', EVENT_TOKENS: 'same-token-0123456789' }).variable).to.equal('EVENT_TOKENS');
    expect(failure({ ADMIN_TOKENS: 'same-token-0123456789', EVENT_TOKENS: 'other-token-0123456789,same-token-0123456789' }).variable).to.equal('EVENT_TOKENS');
  });

  it('refuses a token that is both an agent and an admin token', () => {
    expect(failure({ AGENT_TOKENS: 'same-token-0123456789', ADMIN_TOKENS: 'same-token-0123456789' }).variable).to.equal('AGENT_TOKENS');
  });
});
