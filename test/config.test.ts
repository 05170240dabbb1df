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
  it('has the defaults of SPEC.md', () => {
    const c = loadConfig({});
    expect(c).to.include({
      host: '127.0.0.1', port: 8080, dbPath: './data/registry.db', poolFile: 'seed/identifiers.txt',
      leaseTtlSeconds: 90, reaperSchedule: '*/10 * * * * *', reuseCooldownSeconds: 90, startupGraceSeconds: 90,
      reaperMaxFraction: 0.5, reaperMinHold: 10, logLevel: 'info',
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
    ['DB_BUSY_TIMEOUT_MS', 'forever'], ['AGENT_TOKENS', 'replace-me-agent-token-0000'], ['ADMIN_TOKENS', 'REPLACE-ME-admin-token-0000'],
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
