import { query } from "./_generated/server.js";

/** Site settings that rarely change. Public. */
export const get = query({
  args: {},
  handler: async (ctx) => {
    const stored = await ctx.db.query("config").first();
    return stored ?? { siteName: "convex-edge demo", defaultChannel: "general", maxMessageLength: 1000 };
  },
});
