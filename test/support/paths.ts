/** Where the repository is, for helpers that run its CLI or build its pages. */
import { resolve } from 'node:path';

export const REPO_ROOT = resolve(import.meta.dirname, '../..');
