/**
 * A stand-in for AWS's instance identity signing, for tests: a "regional" self-signed
 * RSA-2048 certificate and key (subject as AWS's: C=US, ST=Washington State, L=Seattle,
 * O=Amazon Web Services LLC; told apart by serial number, as AWS's are), and the `rsa2048`
 * text IMDS would serve for a given identity document.
 *
 * The default layout copies what AWS sends: BER with indefinite lengths, the document as a
 * constructed OCTET STRING, SHA-256, signed attributes (content type, signing time, message
 * digest), `sha256WithRSAEncryption`, no certificates, base64 in 76-column lines. Options
 * make the variations the tests need (DER, no signed attributes, another digest, the
 * certificate embedded, a detached signature).
 *
 * Used by the unit tests of src/aws/identity.ts and, later, by the HTTP and VM-script tests
 * (with test/support/imds.ts serving the result).
 */
import { webcrypto } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';

type CryptoKeyPair = webcrypto.CryptoKeyPair;

const subtle = webcrypto.subtle;

const OID = {
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  signingTime: '1.2.840.113549.1.9.5',
  algorithmProtection: '1.2.840.113549.1.9.52',
  country: '2.5.4.6',
  state: '2.5.4.8',
  locality: '2.5.4.7',
  organization: '2.5.4.10',
} as const;

export type Digest = 'SHA-1' | 'SHA-256' | 'SHA-384' | 'SHA-512';

/** AWS's documented sample document, as IMDS formats it, with fake ids. */
export interface IdentityDocumentFields {
  accountId: string;
  architecture: string;
  availabilityZone: string;
  billingProducts: null | string[];
  devpayProductCodes: null;
  marketplaceProductCodes: null | string[];
  imageId: string;
  instanceId: string;
  instanceType: string;
  kernelId: null;
  pendingTime: string;
  privateIp: string;
  ramdiskId: null;
  region: string;
  version: string;
}

export const DOCUMENT_DEFAULTS: Readonly<IdentityDocumentFields> = Object.freeze({
  accountId: '111122223333',
  architecture: 'x86_64',
  availabilityZone: 'us-east-1a',
  billingProducts: null,
  devpayProductCodes: null,
  marketplaceProductCodes: null,
  imageId: 'ami-0abcdef1234567890',
  instanceId: 'i-0123456789abcdef0',
  instanceType: 't3.micro',
  kernelId: null,
  pendingTime: '2026-01-08T10:00:00Z',
  privateIp: '10.0.1.23',
  ramdiskId: null,
  region: 'us-east-1',
  version: '2017-09-30',
});

/** The document's text, laid out as IMDS serves it (`"key" : value`, two-space indent, keys sorted). */
export function identityDocument(overrides: Partial<IdentityDocumentFields> & Record<string, unknown> = {}): string {
  const fields: Record<string, unknown> = { ...DOCUMENT_DEFAULTS, ...overrides };
  const lines = Object.keys(fields)
    .sort()
    .map((k) => `  ${JSON.stringify(k)} : ${JSON.stringify(fields[k], null, 0).replace(/,/g, ', ')}`);
  return `{\n${lines.join(',\n')}\n}`;
}

export interface SignOptions {
  /** `aws` (default): BER, indefinite lengths, constructed OCTET STRING. `der`: definite lengths, one OCTET STRING. */
  readonly layout?: 'aws' | 'der';
  /** Default true, as AWS signs. */
  readonly signedAttributes?: boolean;
  /** Default SHA-256, as AWS signs. */
  readonly digest?: Digest;
  /** Put the signer's certificate in the structure (AWS does not). */
  readonly embedCertificate?: boolean;
  /** Leave the document out (a detached signature). */
  readonly detached?: boolean;
  /** The content-type attribute's value (default: data, which is what is signed). */
  readonly signedContentType?: string;
}

export interface RegionSigner {
  readonly region: string;
  /** The regional certificate, PEM, as an operator puts it in AWS_IID_CERT_FILE. */
  readonly certPem: string;
  /** The private key, PKCS#8 PEM (for `openssl cms -sign` in cross-checks). */
  readonly keyPem: string;
  /** Upper-case hex, as `openssl x509 -serial` prints it. */
  readonly serial: string;
  /** The `rsa2048` text IMDS would serve for this document. */
  sign(document: string, options?: SignOptions): Promise<string>;
}

export interface RegionOptions {
  /** Serial number, hex (default: random, 8 bytes as AWS's). An impostor reuses a real one. */
  readonly serial?: string;
  /** Key size (default 2048). */
  readonly bits?: number;
}

function pem(label: string, der: ArrayBuffer | Uint8Array): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;
}

/** 76-column base64, as the rsa2048 text comes. */
export function wrap76(der: ArrayBuffer | Uint8Array): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return b64.replace(/.{1,76}/g, '$&\n').trimEnd();
}

/** One attribute per RDN, as AWS's certificates name themselves (PKI.js alone would put all four in one). */
function awsName(): pkijs.RelativeDistinguishedNames {
  const rdn = (type: string, value: string): asn1js.Set =>
    new asn1js.Set({ value: [new asn1js.Sequence({ value: [new asn1js.ObjectIdentifier({ value: type }), new asn1js.PrintableString({ value })] })] });
  const name = new asn1js.Sequence({
    value: [rdn(OID.country, 'US'), rdn(OID.state, 'Washington State'), rdn(OID.locality, 'Seattle'), rdn(OID.organization, 'Amazon Web Services LLC')],
  });
  return pkijs.RelativeDistinguishedNames.fromBER(name.toBER(false));
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(8));
  bytes[0] = (bytes[0] ?? 0) & 0x7f | 0x40; // positive, eight significant bytes
  return Buffer.from(bytes).toString('hex').toUpperCase();
}

async function rsaKeyPair(bits: number): Promise<CryptoKeyPair> {
  return subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['sign', 'verify'],
  );
}

/** A self-signed certificate with AWS's subject, valid 2015-2195 as AWS's are. */
async function selfSigned(keys: CryptoKeyPair, serial: string): Promise<pkijs.Certificate> {
  const cert = new pkijs.Certificate();
  cert.version = 2;
  cert.serialNumber = new asn1js.Integer({ valueHex: new Uint8Array(Buffer.from(serial.length % 2 ? `0${serial}` : serial, 'hex')) });
  cert.issuer = awsName();
  cert.subject = awsName();
  cert.notBefore = new pkijs.Time({ type: pkijs.TimeType.UTCTime, value: new Date('2015-10-29T09:00:57Z') });
  cert.notAfter = new pkijs.Time({ type: pkijs.TimeType.GeneralizedTime, value: new Date('2195-04-03T09:00:57Z') });
  const basic = new pkijs.BasicConstraints({ cA: true, pathLenConstraint: 0 });
  const keyUsage = new asn1js.BitString({ valueHex: new Uint8Array([0x80]), unusedBits: 7 }); // digitalSignature
  cert.extensions = [
    new pkijs.Extension({ extnID: '2.5.29.15', critical: false, extnValue: keyUsage.toBER(false), parsedValue: keyUsage }),
    new pkijs.Extension({ extnID: '2.5.29.19', critical: true, extnValue: basic.toSchema().toBER(false), parsedValue: basic }),
  ];
  await cert.subjectPublicKeyInfo.importKey(keys.publicKey);
  await cert.sign(keys.privateKey, 'SHA-256');
  return cert;
}

function attribute(type: string, value: asn1js.AsnType): pkijs.Attribute {
  return new pkijs.Attribute({ type, values: [value] });
}

/** Marks the document and everything around it indefinite-length, as AWS encodes them. */
function awsLayout(info: pkijs.ContentInfo): ArrayBuffer {
  const schema = info.toSchema();
  const sd = (schema.valueBlock.value[1] as asn1js.Constructed).valueBlock.value[0] as asn1js.Sequence;
  const encap = sd.valueBlock.value.find((b) => b instanceof asn1js.Sequence && b.valueBlock.value[0] instanceof asn1js.ObjectIdentifier) as asn1js.Sequence;
  const wrapper = encap.valueBlock.value[1] as asn1js.Constructed | undefined;
  const octets = wrapper?.valueBlock.value[0];
  // asn1js writes every ancestor of an indefinite-length block indefinite too.
  if (octets) octets.lenBlock.isIndefiniteForm = true;
  else schema.lenBlock.isIndefiniteForm = true;
  return schema.toBER(false);
}

/** CMSAlgorithmProtection (RFC 6211), which AWS signs too: the digest and signature algorithms, bound. */
async function algorithmProtection(key: webcrypto.CryptoKey, digest: Digest): Promise<asn1js.Sequence> {
  const engine = pkijs.getCrypto(true);
  const digestAlgorithm = new pkijs.AlgorithmIdentifier({ algorithmId: engine.getOIDByAlgorithm({ name: digest }, true) });
  const { signatureAlgorithm } = await engine.getSignatureParameters(key, digest);
  return new asn1js.Sequence({
    value: [
      digestAlgorithm.toSchema(),
      new asn1js.Constructed({ idBlock: { tagClass: 3, tagNumber: 1 }, value: signatureAlgorithm.toSchema().valueBlock.value }),
    ],
  });
}

async function signWith(cert: pkijs.Certificate, pkcs8: ArrayBuffer, document: string, options: SignOptions): Promise<string> {
  const digest = options.digest ?? 'SHA-256';
  const key = await subtle.importKey('pkcs8', pkcs8, { name: 'RSASSA-PKCS1-v1_5', hash: digest }, false, ['sign']);
  const content = new TextEncoder().encode(document);
  const cms = new pkijs.SignedData({
    version: 1,
    encapContentInfo: new pkijs.EncapsulatedContentInfo({ eContentType: OID.data, eContent: new asn1js.OctetString({ valueHex: content }) }),
    signerInfos: [
      new pkijs.SignerInfo({ version: 1, sid: new pkijs.IssuerAndSerialNumber({ issuer: cert.issuer, serialNumber: cert.serialNumber }) }),
    ],
    ...(options.embedCertificate ? { certificates: [cert] } : {}),
  });
  const signer = cms.signerInfos[0];
  if (!signer) throw new Error('no signer');
  if (options.signedAttributes !== false) {
    signer.signedAttrs = new pkijs.SignedAndUnsignedAttributes({
      type: 0,
      attributes: [
        attribute(OID.contentType, new asn1js.ObjectIdentifier({ value: options.signedContentType ?? OID.data })),
        attribute(OID.signingTime, new asn1js.UTCTime({ valueDate: new Date('2026-01-08T10:00:01Z') })),
        attribute(OID.algorithmProtection, await algorithmProtection(key, digest)),
        attribute(OID.messageDigest, new asn1js.OctetString({ valueHex: await subtle.digest(digest, content) })),
      ],
    });
  }
  await cms.sign(key, 0, digest, content);
  if (options.layout === 'der') cms.encapContentInfo.eContent = new asn1js.OctetString({ valueHex: content });
  if (options.detached) delete cms.encapContentInfo.eContent;
  const info = new pkijs.ContentInfo({ contentType: OID.signedData, content: cms.toSchema(true) });
  return wrap76(options.layout === 'der' || options.detached ? info.toSchema().toBER(false) : awsLayout(info));
}

/** A region's certificate and key, and a signer for documents (RSA key generation: tens of ms to a second). */
export async function makeRegionSigner(region: string, options: RegionOptions = {}): Promise<RegionSigner> {
  const keys = await rsaKeyPair(options.bits ?? 2048);
  const serial = (options.serial ?? randomSerial()).toUpperCase();
  const cert = await selfSigned(keys, serial);
  const pkcs8 = await subtle.exportKey('pkcs8', keys.privateKey);
  return {
    region,
    certPem: pem('CERTIFICATE', cert.toSchema().toBER(false)),
    keyPem: pem('PRIVATE KEY', pkcs8),
    serial: serial.replace(/^0+(?=.)/, ''),
    sign: (document, signOptions = {}) => signWith(cert, pkcs8, document, signOptions),
  };
}

/**
 * The document bytes inside an rsa2048 text, replaced by another of the same length (a
 * tampered document whose signature was made for the original).
 */
export function tamper(rsa2048: string, from: string, to: string): string {
  if (from.length !== to.length) throw new Error('tamper: same length only, so the structure stays valid');
  const bytes = Buffer.from(rsa2048.replace(/\s+/g, ''), 'base64');
  const at = bytes.indexOf(Buffer.from(from));
  if (at < 0) throw new Error(`tamper: "${from}" is not in the document`);
  Buffer.from(to).copy(bytes, at);
  return wrap76(bytes);
}
