/**
 * Origins that misbehave on purpose, on loopback: one that accepts connections and never
 * answers, and an HTTP one whose handler the test writes (half a body, then silence; endless
 * bodies; lying Content-Length).
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';

export interface TestServer {
  url: string;
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  close(): Promise<void>;
}

/**
 * Accepts every connection and never sends a byte. `passThrough(requestHead)` may instead
 * pipe a connection to `forwardPort` (a healthy origin), so one server can stall some paths only.
 */
export async function startStalledOrigin(options: { forwardPort?: number; passThrough?: (head: string) => boolean } = {}): Promise<TestServer> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    if (!options.forwardPort || !options.passThrough) return; // accept and say nothing
    socket.once('data', (head: Buffer) => {
      if (!options.passThrough!(head.toString('latin1'))) return;
      socket.pause();
      const upstream = connect(options.forwardPort!, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('close', () => sockets.delete(upstream));
      upstream.on('error', () => socket.destroy());
      upstream.write(head);
      socket.pipe(upstream).pipe(socket);
      socket.resume();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get connections() {
      return connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** An HTTP server on loopback with the test's own handler. */
export async function startHttpOrigin(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TestServer> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createHttpServer(handler);
  server.on('connection', (s) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get connections() {
      return connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
