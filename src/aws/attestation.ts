/**
 * Attested claims as the registry runs them: the settings (AWS_IID_CERT_FILE, AWS_ACCOUNT_IDS,
 * AWS_REGIONS, AWS_IID_MATCH_SOURCE_IP) and the certificates currently trusted, read from the
 * file at start-up and again on each reload (SIGHUP). A reload that fails keeps the
 * certificates in force and says why; nothing is ever verified against no certificates.
 */
import { readFileSync } from 'node:fs';
import type { InstanceInfo } from '../domain/types.js';
import { IidCertificateError, attestIdentity, loadIidCertificates } from './identity.js';
import type { IidRefusal, IidTrust } from './identity.js';

export interface AttestationSettings {
  /** PEM file of AWS's regional RSA-2048 certificates. */
  readonly certFile: string;
  readonly accountIds: readonly string[];
  /** Null: any region whose certificate is in the file. */
  readonly regions: readonly string[] | null;
  /** The request's source address must be the document's privateIp. */
  readonly matchSourceIp: boolean;
}

/** Reads and parses the certificate file; throws IidCertificateError naming what is wrong. */
export function readIidTrust(certFile: string): IidTrust {
  let pem: string;
  try {
    pem = readFileSync(certFile, 'utf8');
  } catch (e) {
    const code = typeof e === 'object' && e !== null && 'code' in e ? String(e.code) : String(e);
    throw new IidCertificateError(`cannot read ${certFile} (${code})`);
  }
  try {
    return loadIidCertificates(pem);
  } catch (e) {
    if (e instanceof IidCertificateError) throw new IidCertificateError(`${certFile}: ${e.message}`);
    throw e;
  }
}

export type AttestationResult = { readonly ok: true; readonly instance: InstanceInfo } | IidRefusal;

export class Attestation {
  private trust: IidTrust;

  /** Reads the certificates now: throws IidCertificateError when the file is missing or bad. */
  constructor(readonly settings: AttestationSettings, private readonly read: (file: string) => IidTrust = readIidTrust) {
    this.trust = read(settings.certFile);
  }

  /** How many certificates are trusted now (for the log line of a reload). */
  get certificates(): number {
    return this.trust.certificates.length;
  }

  /** Reads the file again; on failure the certificates in force stay, and the error says why. */
  reload(): void {
    this.trust = this.read(this.settings.certFile);
  }

  /** Verifies `identity` for a claim by `clientId` from `sourceAddress`: the instance's facts, or the refusal (401 before 403). */
  async check(identity: unknown, clientId: string, sourceAddress: string | null): Promise<AttestationResult> {
    const r = await attestIdentity(identity, this.trust, {
      clientId,
      accountIds: this.settings.accountIds,
      regions: this.settings.regions,
      sourceAddress: this.settings.matchSourceIp ? (sourceAddress ?? '') : null,
    });
    if (!r.ok) return r;
    const i = r.instance;
    return {
      ok: true,
      instance: { accountId: i.account_id, region: i.region, availabilityZone: i.availability_zone, instanceType: i.instance_type, imageId: i.image_id },
    };
  }
}
