// Polls `predicate` every `everyMs` until it returns something truthy (resolved with it), or
// rejects naming `what` after `ms`: how the node scripts wait on a condition, with a deadline.
export function until(predicate, what, ms = 20_000, everyMs = 10) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const value = predicate();
      if (value) return resolve(value);
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, everyMs);
    };
    tick();
  });
}
