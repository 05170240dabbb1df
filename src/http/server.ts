/**
 * The HTTP server around the Koa app: limits that keep slow or idle clients from holding
 * sockets, and parser errors (oversized headers, a garbled request line) answered in the same
 * JSON shape as every other error instead of Node's bare 400/431.
 */
import { STATUS_CODES, createServer } from 'node:http';
import type { RequestListener, Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { RegistryError } from '../domain/errors.js';
import type { TlsMaterial } from '../tls.js';
import { errorAnswer } from './errors.js';

export interface ServerLimits {
  /** The whole request line and headers must arrive within this. */
  readonly headersTimeoutMs: number;
  /** The whole request must arrive within this. */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  /** How often Node looks for connections past those limits. */
  readonly checkIntervalMs: number;
  readonly maxHeadersCount: number;
  readonly maxRequestsPerSocket: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  checkIntervalMs: 1_000,
  maxHeadersCount: 100,
  maxRequestsPerSocket: 10_000,
};

/** An invalid_request, answered as the app would, straight onto the socket; no body for a HEAD request, as HTTP requires. */
function answer(socket: Duplex, head: boolean, message: string): void {
  const a = errorAnswer(new RegistryError('invalid_request', message));
  const body = JSON.stringify(a.body);
  socket.end(
    `HTTP/1.1 ${a.status} ${STATUS_CODES[a.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
  );
}

/**
 * HTTP, or HTTPS with `tls` (certificate chain and key, PEM). The HTTPS server's
 * `setSecureContext` swaps the pair for new connections (a SIGHUP reload).
 */
export function createHttpServer(listener: RequestListener, limits: ServerLimits = DEFAULT_LIMITS, tls: TlsMaterial | null = null): Server {
  const options = { connectionsCheckingInterval: limits.checkIntervalMs };
  const server = tls ? createHttpsServer({ ...options, cert: tls.cert, key: tls.key }, listener) : createServer(options, listener);
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.maxHeadersCount = limits.maxHeadersCount;
  server.maxRequestsPerSocket = limits.maxRequestsPerSocket;
  server.on('clientError', (err: Error & { code?: string; rawPacket?: Buffer }, socket: Duplex) => {
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    // Too slow to send its request: not worth an answer it will be too slow to read.
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      socket.destroy();
      return;
    }
    const head = err.rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
    if (err.code === 'HPE_HEADER_OVERFLOW') return answer(socket, head, 'the request line and headers are larger than 16 KiB');
    answer(socket, head, 'the request could not be parsed as HTTP/1.1');
  });
  return server;
}
