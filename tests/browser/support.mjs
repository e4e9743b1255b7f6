// What the browser tests share: where the binaries and Chromium are, and
// starting a real process that is ready once its stdout says so.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
export const BIN = (name) => path.join(TARGET, 'debug', name);
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
/// Upper bound for any single step (process start, page state).
export const STEP_MS = 20000;

/// Every process `start` spawned, for `killAll`.
const procs = [];

/// Spawns a process. `ready` is a pattern or a list of them: resolves
/// with the first stdout line matching it (or with one such match per
/// pattern, in order), or rejects if the process exits first or a step's
/// time passes.
export function start(cmd, args, ready) {
  const patterns = Array.isArray(ready) ? ready : [ready];
  const child = spawn(cmd, args, {
    env: { ...process.env, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  procs.push(child);
  const lines = createInterface({ input: child.stdout });
  const found = patterns.map(() => null);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} not ready in time`)), STEP_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited with ${code} before it was ready`));
    });
    lines.on('line', (line) => {
      patterns.forEach((re, i) => { found[i] = found[i] || line.match(re); });
      if (found.every(Boolean)) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve(Array.isArray(ready) ? found : found[0]);
      }
    });
  });
}

/// Kills what `start` spawned, newest first (the processes started here only).
export function killAll() {
  for (const child of procs.reverse()) child.kill('SIGKILL');
  procs.length = 0;
}
