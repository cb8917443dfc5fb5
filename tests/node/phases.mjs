// How a node script talks with the Rust test that drives it in phases: it prints one JSON line
// per phase (`phase`), and waits for the test's next word on stdin (`step`).
import { createInterface } from "node:readline";

let lines = null;

// Waits for the test's next line on stdin; it must be `expected`.
export async function step(expected) {
  lines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const { value } = await lines.next();
  if (value?.trim() !== expected) throw new Error(`expected "${expected}" on stdin, got ${value}`);
}

// Prints one phase: `{"phase": name, ...fields}` on a line of its own.
export const phase = (name, fields) => console.log(JSON.stringify({ phase: name, ...fields }));

// `promise`, or a rejection naming `what` after `ms` (a deadline so a hang is reported).
export const withTimeout = (promise, what, ms = 60_000) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))]);
