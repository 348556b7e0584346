/** Every publish test file: the folders its `tempDir` calls made go once the file is done (after its own afterAll hooks). */
import { afterAll } from 'vitest';
import { removeTempDirs } from './helpers.ts';

afterAll(removeTempDirs);
