import { query } from "./_generated/server.js";

/** The caller's identity (tokenIdentifier, subject, issuer, email, name, …) or null. */
export const me = query({
  args: {},
  handler: async (ctx) => {
    return (await ctx.auth.getUserIdentity()) ?? null;
  },
});
