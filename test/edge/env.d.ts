import type { EdgeEnv } from '../../edge/env.ts';

declare global {
  namespace Cloudflare {
    interface Env extends EdgeEnv {}
  }
}
