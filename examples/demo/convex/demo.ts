import { action } from "./_generated/server.js";

/** Returns its arguments unchanged (64-bit integers and bytes included). */
export const echo = action({
  handler: async (_ctx, args: Record<string, unknown>) => {
    return args;
  },
});
