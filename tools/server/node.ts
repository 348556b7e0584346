/** The Node adapter: the Hono app on @hono/node-server, resolved once it is listening. */
import { type ServerType, serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { createServerApp, type ServerOptions } from './app.ts';

export interface ListeningServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export function listen(options: ServerOptions & { port?: number; host?: string }): Promise<ListeningServer> {
  const app = createServerApp(options);
  const host = options.host ?? '127.0.0.1';
  return new Promise((resolve, reject) => {
    let server: ServerType;
    server = serve({ fetch: app.fetch, port: options.port ?? 8080, hostname: host }, (address: AddressInfo) => {
      const shownHost = host.includes(':') ? `[${host}]` : host;
      resolve({
        url: `http://${shownHost}:${address.port}`,
        port: address.port,
        close: () => new Promise<void>((done, fail) => server.close((e) => (e ? fail(e) : done()))),
      });
    });
    server.once('error', reject);
  });
}
