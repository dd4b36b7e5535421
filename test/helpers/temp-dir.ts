// Temporary folders for tests: made fresh under the system's temporary folder and removed with
// everything in them once the test is done with them, whether it passed or threw.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * `body` with a fresh folder named `prefix` plus random characters; the folder is removed when
 * body returns or throws, or, when body returns a promise, once that promise settles.
 */
export function withTempDir<T>(prefix: string, body: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const remove = () => rmSync(dir, { recursive: true, force: true });
  let result: T;
  try {
    result = body(dir);
  } catch (e) {
    remove();
    throw e;
  }
  if (result instanceof Promise) return result.finally(remove) as T;
  remove();
  return result;
}
