/**
 * EC2 instance identity documents, the way an attested claim proves which instance asks.
 *
 * IMDS serves, at /latest/dynamic/instance-identity/rsa2048, the base64 text of a PKCS#7
 * SignedData that carries the identity document (JSON) as its content and is signed, SHA-256
 * with RSA, by AWS's key for the instance's region. Each region has its own self-signed
 * certificate (all with the same subject, told apart by serial number), published by AWS; the
 * documented check (`openssl smime -verify -noverify -certfile <region cert>`) verifies the
 * signature with that certificate's key and builds no chain, and so does this module: a
 * document is accepted only when its signer is one of the configured certificates and the
 * signature verifies with that certificate's key. Certificates the document itself carries
 * are ignored.
 *
 * What AWS sends (and what is accepted): BER with indefinite lengths, the document as a
 * constructed OCTET STRING, digest SHA-256, signed attributes (content type, signing time,
 * algorithm protection, message digest), signature algorithm `sha256WithRSAEncryption` or
 * `rsaEncryption`, no certificates. DER and signatures without signed attributes pass too, as
 * OpenSSL's check lets them.
 *
 * Pure: text and certificates in, the instance's facts or a refusal out. No store, no HTTP.
 * The refusal's `code` is the registry error code the HTTP layer answers with: `unauthorized`
 * (401: missing, unreadable, unknown signer, bad signature) or `forbidden` (403: a valid
 * document that does not match the claim).
 */
import { X509Certificate } from 'node:crypto';
import { Ajv } from 'ajv';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { errorMessage } from '../domain/errors.js';

/** Far above a real document (about 1.5 KB of base64); below it nothing is parsed twice. */
export const IDENTITY_MAX_CHARS = 16 * 1024;

const OID = {
  signedData: '1.2.840.113549.1.7.2',
  data: '1.2.840.113549.1.7.1',
  contentType: '1.2.840.113549.1.9.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
} as const;

/** SHA-256 is what AWS uses; its longer siblings are as strong. SHA-1 and MD5 are refused. */
const DIGESTS: Readonly<Record<string, string>> = {
  '2.16.840.1.101.3.4.2.1': 'SHA-256',
  '2.16.840.1.101.3.4.2.2': 'SHA-384',
  '2.16.840.1.101.3.4.2.3': 'SHA-512',
};

/** RSA PKCS#1 v1.5, named by the key (`rsaEncryption`, the digest then comes from the signer) or with its hash. */
const SIGNATURES: Readonly<Record<string, string>> = {
  [OID.rsaEncryption]: 'RSA',
  '1.2.840.113549.1.1.11': 'SHA-256 with RSA',
  '1.2.840.113549.1.1.12': 'SHA-384 with RSA',
  '1.2.840.113549.1.1.13': 'SHA-512 with RSA',
};

// ---------------------------------------------------------------------------------------------
// Certificates

export class IidCertificateError extends Error {
  override readonly name = 'IidCertificateError';
}

export interface IidCertificate {
  /** Upper-case hex, as `openssl x509 -serial` prints it. */
  readonly serial: string;
  readonly subject: string;
  readonly notAfter: string;
}

/** The certificates documents may be signed by, parsed once (at start-up and on reload). */
export interface IidTrust {
  readonly certificates: readonly IidCertificate[];
  readonly parsed: readonly pkijs.Certificate[];
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/**
 * Reads the PEM file of AWS's regional RSA-2048 certificates (one per region in use; other
 * text between the blocks is ignored). Throws IidCertificateError naming the block at fault:
 * no certificate at all, another kind of PEM block, a certificate that does not parse, or one
 * whose key is not RSA of at least 2048 bits (the DSA certificate and the older RSA-1024 ones
 * AWS publishes beside them are for the other two signatures).
 */
export function loadIidCertificates(pem: string): IidTrust {
  const certificates: IidCertificate[] = [];
  const parsed: pkijs.Certificate[] = [];
  let n = 0;
  for (const m of pem.matchAll(PEM_BLOCK)) {
    n += 1;
    const [, label = '', body = ''] = m;
    if (label !== 'CERTIFICATE') throw new IidCertificateError(`block ${n} is "${label}", not a CERTIFICATE`);
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(`-----BEGIN CERTIFICATE-----\n${body.trim()}\n-----END CERTIFICATE-----\n`);
    } catch (e) {
      throw new IidCertificateError(`certificate ${n} does not parse (${errorMessage(e)})`);
    }
    const key = x509.publicKey;
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (key.asymmetricKeyType !== 'rsa' || bits < 2048) {
      const what = key.asymmetricKeyType === 'rsa' ? `RSA-${bits}` : (key.asymmetricKeyType ?? 'unknown').toUpperCase();
      throw new IidCertificateError(
        `certificate ${n} (serial ${x509.serialNumber}) has a ${what} key: use AWS's RSA-2048 certificates, ` +
          'not the DSA or RSA ones published for the other signatures',
      );
    }
    certificates.push({ serial: x509.serialNumber.toUpperCase(), subject: x509.subject.replace(/\n/g, ', '), notAfter: x509.validTo });
    parsed.push(pkijs.Certificate.fromBER(new Uint8Array(x509.raw)));
  }
  if (n === 0) throw new IidCertificateError('no "-----BEGIN CERTIFICATE-----" block found');
  return Object.freeze({ certificates: Object.freeze(certificates), parsed: Object.freeze(parsed) });
}

// ---------------------------------------------------------------------------------------------
// Results

/** What a verified document proves about the instance that sent it. */
export interface InstanceFacts {
  readonly instance_id: string;
  readonly account_id: string;
  readonly region: string;
  readonly availability_zone: string;
  readonly instance_type: string;
  readonly image_id: string;
  readonly private_ip: string;
}

export type IidRefusalReason =
  | 'missing'
  | 'unreadable'
  | 'unknown_signer'
  | 'bad_signature'
  | 'account'
  | 'region'
  | 'instance_id'
  | 'source_address';

export interface IidRefusal {
  readonly ok: false;
  /** The registry error code: 401 `unauthorized` or 403 `forbidden`. */
  readonly code: 'unauthorized' | 'forbidden';
  /** Short and fixed, for a metric label and a log field. */
  readonly reason: IidRefusalReason;
  /** Says which check failed and on what value; never the document itself. */
  readonly message: string;
}

export interface IidAccepted {
  readonly ok: true;
  readonly instance: InstanceFacts;
}

export type IidResult = IidAccepted | IidRefusal;

function unauthorized(reason: IidRefusalReason, message: string): IidRefusal {
  return { ok: false, code: 'unauthorized', reason, message: `identity: ${message}` };
}

function forbidden(reason: IidRefusalReason, message: string): IidRefusal {
  return { ok: false, code: 'forbidden', reason, message: `identity: ${message}` };
}

// ---------------------------------------------------------------------------------------------
// Reading: text -> verified document (401 refusals)

const documentSchema = {
  type: 'object',
  required: ['instanceId', 'accountId', 'region', 'availabilityZone', 'instanceType', 'imageId', 'privateIp'],
  properties: {
    instanceId: { type: 'string', minLength: 1, maxLength: 255 },
    accountId: { type: 'string', pattern: '^[0-9]{12}$' },
    region: { type: 'string', minLength: 1, maxLength: 64 },
    availabilityZone: { type: 'string', minLength: 1, maxLength: 64 },
    instanceType: { type: 'string', minLength: 1, maxLength: 64 },
    imageId: { type: 'string', minLength: 1, maxLength: 255 },
    privateIp: { type: 'string', minLength: 1, maxLength: 64 },
  },
} as const;

interface IdentityDocument {
  instanceId: string;
  accountId: string;
  region: string;
  availabilityZone: string;
  instanceType: string;
  imageId: string;
  privateIp: string;
}

const validateDocument = new Ajv({ allErrors: false, strict: true }).compile<IdentityDocument>(documentSchema);

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const PKCS7_ARMOUR = /^-----BEGIN (PKCS7|CMS)-----([\s\S]*)-----END \1-----$/;

/** The base64 text, with or without the PEM armour AWS's instructions (PKCS7) or `openssl cms` (CMS) wrap it in, as bytes. */
function decodeText(text: string): Uint8Array | IidRefusal {
  const trimmed = text.trim();
  const body = (PKCS7_ARMOUR.exec(trimmed)?.[2] ?? trimmed).replace(/\s+/g, '');
  if (!BASE64.test(body) || body.length % 4 !== 0) {
    return unauthorized('unreadable', 'is not base64 (expected the text IMDS serves at /latest/dynamic/instance-identity/rsa2048)');
  }
  return new Uint8Array(Buffer.from(body, 'base64'));
}

/** The SignedData structure, or why the bytes are not one. The library parses; nothing here reads ASN.1 by hand. */
function parseSignedData(bytes: Uint8Array): pkijs.SignedData | IidRefusal {
  const notSignedData = unauthorized('unreadable', 'is not a PKCS#7 signed-data structure');
  try {
    const asn1 = asn1js.fromBER(bytes);
    if (asn1.offset === -1) return notSignedData;
    const info = new pkijs.ContentInfo({ schema: asn1.result });
    if (info.contentType !== OID.signedData) return notSignedData;
    return new pkijs.SignedData({ schema: info.content });
  } catch {
    return notSignedData;
  }
}

function hex(view: ArrayBuffer | Uint8Array): string {
  return Buffer.from(view instanceof Uint8Array ? view : new Uint8Array(view)).toString('hex').toUpperCase();
}

/** How the signer names its certificate, for the operator reading a refusal. */
function signerName(signer: pkijs.SignerInfo): string {
  const sid: unknown = signer.sid;
  return sid instanceof pkijs.IssuerAndSerialNumber
    ? `serial ${hex(sid.serialNumber.valueBlock.valueHexView).replace(/^00(?=.)/, '')}`
    : 'a subject key identifier';
}

/** The checks the library leaves to its caller: what is signed, with what, and that it is carried. */
function checkShape(sd: pkijs.SignedData): IidRefusal | null {
  if (sd.signerInfos.length !== 1) return unauthorized('unreadable', `has ${sd.signerInfos.length} signers, expected one`);
  if (sd.encapContentInfo.eContentType !== OID.data) return unauthorized('unreadable', 'does not sign plain data');
  if (!sd.encapContentInfo.eContent) return unauthorized('unreadable', 'carries no document (a detached signature)');
  const signer = sd.signerInfos[0];
  if (!signer) return unauthorized('unreadable', 'has no signer');
  const digest = signer.digestAlgorithm.algorithmId;
  if (!(digest in DIGESTS)) return unauthorized('bad_signature', `digest algorithm ${digest} is not accepted (SHA-256 expected)`);
  const algorithm = signer.signatureAlgorithm.algorithmId;
  if (!(algorithm in SIGNATURES)) return unauthorized('bad_signature', `signature algorithm ${algorithm} is not accepted (RSA expected)`);
  // The library checks the content-type attribute is there, not that it names what is signed.
  const contentType = signer.signedAttrs?.attributes.find((a) => a.type === OID.contentType);
  if (signer.signedAttrs && !(contentType?.values[0] instanceof asn1js.ObjectIdentifier && contentType.values[0].getValue() === OID.data)) {
    return unauthorized('bad_signature', 'its signed content type is not data');
  }
  return null;
}

async function verifySignature(sd: pkijs.SignedData, trust: IidTrust): Promise<IidRefusal | null> {
  const signer = sd.signerInfos[0];
  const who = signer ? signerName(signer) : 'nobody';
  // Only the configured certificates can vouch: any the document carries are dropped.
  sd.certificates = [...trust.parsed];
  try {
    const verified = await sd.verify({ signer: 0, checkChain: false, extendedMode: true });
    return verified.signatureVerified === true
      ? null
      : unauthorized('bad_signature', `the signature does not verify with the certificate of ${who}`);
  } catch (e) {
    if (e instanceof pkijs.SignedDataVerifyError) {
      if (e.code === 3) {
        return unauthorized('unknown_signer', `signed by ${who}, which is not among the configured AWS certificates (is its region's RSA-2048 certificate in AWS_IID_CERT_FILE?)`);
      }
      if (/digest/i.test(e.message)) return unauthorized('bad_signature', 'the document does not match its signature (altered)');
      return unauthorized('bad_signature', `the signature does not verify (${e.message})`);
    }
    return unauthorized('bad_signature', 'the signature does not verify');
  }
}

function readDocument(sd: pkijs.SignedData): IdentityDocument | IidRefusal {
  const content = sd.encapContentInfo.eContent;
  const bytes = content ? new Uint8Array(content.getValue()) : new Uint8Array();
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return unauthorized('unreadable', 'the signed document is not JSON');
  }
  if (validateDocument(doc)) return doc;
  const err = validateDocument.errors?.[0];
  const field = err?.keyword === 'required' ? String(err.params['missingProperty']) : (err?.instancePath.slice(1) ?? '');
  return unauthorized('unreadable', `the signed document has no valid ${field || 'content'}`);
}

function factsOf(doc: IdentityDocument): InstanceFacts {
  return Object.freeze({
    instance_id: doc.instanceId,
    account_id: doc.accountId,
    region: doc.region,
    availability_zone: doc.availabilityZone,
    instance_type: doc.instanceType,
    image_id: doc.imageId,
    private_ip: doc.privateIp,
  });
}

function isRefusal<T>(v: T | IidRefusal): v is IidRefusal {
  return typeof v === 'object' && v !== null && 'ok' in v && v.ok === false;
}

/**
 * Verifies the `rsa2048` text against the configured certificates and reads the document it
 * carries. Every refusal here is 401 `unauthorized`: missing, unreadable, unknown signer, or
 * bad signature (a tampered document included). Nothing of the document is trusted unless
 * the result is `ok`.
 */
export async function readIdentity(identity: unknown, trust: IidTrust): Promise<IidResult> {
  if (identity === undefined || identity === null || (typeof identity === 'string' && identity.trim() === '')) {
    return unauthorized('missing', 'is required: send the text IMDS serves at /latest/dynamic/instance-identity/rsa2048');
  }
  if (typeof identity !== 'string') return unauthorized('unreadable', 'must be a string (the base64 rsa2048 text)');
  if (identity.length > IDENTITY_MAX_CHARS) return unauthorized('unreadable', `is longer than ${IDENTITY_MAX_CHARS} characters`);
  const bytes = decodeText(identity);
  if (isRefusal(bytes)) return bytes;
  const sd = parseSignedData(bytes);
  if (isRefusal(sd)) return sd;
  const shape = checkShape(sd);
  if (shape) return shape;
  const signature = await verifySignature(sd, trust);
  if (signature) return signature;
  const doc = readDocument(sd);
  if (isRefusal(doc)) return doc;
  return { ok: true, instance: factsOf(doc) };
}

// ---------------------------------------------------------------------------------------------
// Checking: verified facts -> the claim (403 refusals)

export interface IidPolicy {
  /** The claim's `client_id`: must be the document's `instanceId`. */
  readonly clientId: string;
  /** Accounts whose instances may claim (`AWS_ACCOUNT_IDS`). */
  readonly accountIds: readonly string[];
  /** Regions whose instances may claim (`AWS_REGIONS`); absent or null: any. */
  readonly regions?: readonly string[] | null;
  /** The request's source address, when it must equal the document's `privateIp`; absent or null: not checked. */
  readonly sourceAddress?: string | null;
}

/** `::ffff:10.0.0.5`, as a dual-stack socket reports an IPv4 peer, is `10.0.0.5`. */
export function plainAddress(address: string): string {
  const m = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  return m?.[1] ?? address;
}

/**
 * Whether a verified instance may make this claim. Refusals are 403 `forbidden`, checked in
 * this order: account, region, instance id, source address.
 */
export function checkInstance(instance: InstanceFacts, policy: IidPolicy): IidResult {
  if (!policy.accountIds.includes(instance.account_id)) {
    return forbidden('account', `account ${instance.account_id} may not claim (not in AWS_ACCOUNT_IDS)`);
  }
  if (policy.regions && !policy.regions.includes(instance.region)) {
    return forbidden('region', `region ${instance.region} may not claim (not in AWS_REGIONS)`);
  }
  if (instance.instance_id !== policy.clientId) {
    return forbidden('instance_id', `the document is for instance ${instance.instance_id}, not client_id ${policy.clientId}`);
  }
  if (policy.sourceAddress !== undefined && policy.sourceAddress !== null) {
    const from = plainAddress(policy.sourceAddress);
    if (from !== instance.private_ip) {
      return forbidden('source_address', `the request comes from ${from}, not from the instance's private address ${instance.private_ip}`);
    }
  }
  return { ok: true, instance };
}

/** Reads, verifies and checks an attested claim: the instance's facts, or the first refusal (401 before 403). */
export async function attestIdentity(identity: unknown, trust: IidTrust, policy: IidPolicy): Promise<IidResult> {
  const read = await readIdentity(identity, trust);
  return read.ok ? checkInstance(read.instance, policy) : read;
}
