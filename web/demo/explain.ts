/**
 * What went wrong, in words a user of the demo can act on: one sentence saying what to do,
 * and the loader's own one-line message as the detail. No DOM.
 */
export interface ErrorContext {
  origin: string;
  model: string;
  tag: string;
  device: string;
}

export interface Explained {
  /** What happened and what to do about it. */
  text: string;
  /** The error's own message (and code), for the curious and for bug reports. */
  detail: string;
  code: string;
}

const FIELDS: Record<string, string> = {
  prompt: 'Prompt',
  negativePrompt: 'Negative prompt',
  steps: 'Steps',
  guidanceScale: 'Guidance',
  scheduler: 'Scheduler',
  seed: 'Seed',
  width: 'Size',
  height: 'Size',
};

export function explainError(e: unknown, ctx: ErrorContext): Explained {
  const err = e as Error & { code?: unknown };
  const code = typeof err?.code === 'string' ? err.code : '';
  const message = String(err?.message ?? e);
  const detail = code ? `${code}: ${message}` : message;
  const edge = `the edge worker at ${ctx.origin}`;
  const say = (text: string): Explained => ({ text, detail, code });

  // fetch() failing outright (refused, reset, DNS) reads "Failed to fetch" in Chromium, "NetworkError" in Firefox, "Load failed" in Safari.
  const unreachable = /could not reach|failed to fetch|networkerror|load failed|no response within|ECONNREFUSED/i.test(message);
  const http = /HTTP (\d{3})/.exec(message);
  switch (code) {
    case 'network':
      if (unreachable || !http) return say(`${cap(edge)} does not answer — is \`npm start\` running?`);
      if (Number(http[1]) >= 500) return say(`${cap(edge)} answered with an error (HTTP ${http[1]}) — see the \`npm start\` terminal for why, then try again.`);
      return say(`${cap(edge)} refused a download (HTTP ${http[1]}) — run \`npm start\` again, then reload this page.`);
    case 'not-found':
      if (message.includes('/tags/')) return say(`${cap(edge)} has no model "${ctx.model}" with the tag "${ctx.tag}" — pick another tag, or run \`npm start\` again to publish it.`);
      return say(`${cap(edge)} is missing a file this model needs — run \`npm start\` again to publish it, then generate again.`);
    case 'digest-mismatch':
      return say('A downloaded file did not match its fingerprint, so it was not used — press Clear cache and generate again.');
    case 'quota':
      return say("This browser's storage is full — press Clear cache, or free some disk space, and generate again.");
    case 'aborted':
      return say('Stopped.');
    case 'auth':
      return say(`${cap(edge)} wants a signed URL or a token for this model — open a link made with \`fuseload sign\`.`);
    case 'bad-input': {
      const field = /^(\w+): (.*)$/.exec(message);
      if (field && FIELDS[field[1]]) return say(`${FIELDS[field[1]]}: ${field[2]}.`.replace(/\.\.$/, '.'));
      return say(`${cap(message)}`);
    }
    case 'engine':
    case 'unsupported':
    case 'shape-mismatch':
      return say(`The model could not run${ctx.device === 'wasm' ? '' : ` on device ${ctx.device}`}: ${message}${ctx.device === 'wasm' ? '' : ' — try the WASM device'}.`);
  }
  if (unreachable) return say(`${cap(edge)} does not answer — is \`npm start\` running?`);
  return say(cap(message));
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
