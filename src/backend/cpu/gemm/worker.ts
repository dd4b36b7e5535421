// A GEMM pool worker: sleeps on its wake word, takes the newest job description from its port
// without an event loop turn, and claims tiles until the job has none left.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { CTRL_WAKE_BASE, runClaimedTiles, type PoolJob } from './pool.js';

const { ctrl, index } = workerData as { ctrl: Int32Array; index: number };
const wake = CTRL_WAKE_BASE + index;
const port = parentPort;
if (port === null) throw new Error('gemm worker: must run in a worker thread');

let seen = 0;
let job: PoolJob | undefined;
for (;;) {
  Atomics.wait(ctrl, wake, seen);
  seen = Atomics.load(ctrl, wake);
  // Jobs are posted before the generation moves, so the newest message is at least as new as
  // `seen`; older ones (jobs the caller finished alone) are dropped.
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) job = m.message as PoolJob;
  if (job !== undefined && job.gen === seen) {
    runClaimedTiles(ctrl, job, true);
  }
}
