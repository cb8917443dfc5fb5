import { ConvexError, v } from "convex/values";
import { action, query } from "./_generated/server.js";

/** Returns its arguments unchanged (64-bit integers and bytes included). */
export const echo = action({
  handler: async (_ctx, args: Record<string, unknown>) => {
    return args;
  },
});

/** The longest message body `check` accepts (`config:get`'s `maxMessageLength`). */
const MAX_BODY = 1000;

/**
 * Logs the check; a body over 1000 characters fails with ConvexError data
 * `{ code: "TooLong", max, length }`.
 */
export const check = query({
  args: { body: v.string() },
  handler: async (_ctx, { body }) => {
    const length = [...body].length;
    console.log(`checking ${length} characters`);
    if (length > MAX_BODY) {
      throw new ConvexError({ code: "TooLong", max: MAX_BODY, length });
    }
    return true;
  },
});
