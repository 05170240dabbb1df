/**
 * The HTTPS certificate and key, read from their PEM files and checked one by one, so a
 * problem names the file (the variable) it is in: at start-up that is a configuration error
 * (exit 78); on a SIGHUP reload the old pair keeps serving.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ConfigError } from './config.js';
import { errorMessage } from './domain/errors.js';

export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
}

function readPem(path: string, variable: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const why = e instanceof Error && 'code' in e ? String(e.code) : String(e);
    throw new ConfigError(variable, `${path} cannot be read (${why})`);
  }
}

const reason = errorMessage;

/** Throws ConfigError naming TLS_CERT_FILE or TLS_KEY_FILE. */
export function readTls(files: TlsFiles): TlsMaterial {
  const cert = readPem(files.certFile, 'TLS_CERT_FILE');
  const key = readPem(files.keyFile, 'TLS_KEY_FILE');
  try {
    new X509Certificate(cert);
  } catch (e) {
    throw new ConfigError('TLS_CERT_FILE', `${files.certFile} is not a PEM certificate (${reason(e)})`);
  }
  try {
    createPrivateKey(key);
  } catch (e) {
    throw new ConfigError('TLS_KEY_FILE', `${files.keyFile} is not a PEM private key, or it is encrypted (${reason(e)})`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    throw new ConfigError('TLS_KEY_FILE', `${files.keyFile} does not go with the certificate in ${files.certFile} (${reason(e)})`);
  }
  return { cert, key };
}
