import { paginationOptsValidator } from "convex/server";
import { v } from "convex/values";
import { mutation, query } from "./_generated/server.js";

/** The channel's last 100 messages, oldest first. Public. */
export const list = query({
  args: { channel: v.string() },
  handler: async (ctx, { channel }) => {
    const newest = await ctx.db
      .query("messages")
      .withIndex("by_channel", (q) => q.eq("channel", channel))
      .order("desc")
      .take(100);
    return newest.reverse();
  },
});

/**
 * One page of the channel's messages, newest first (for `usePaginatedQuery`). Public.
 * The page's end is kept in the query's journal, so a message posted while the page is loaded
 * joins it instead of pushing its oldest message out of view.
 */
export const page = query({
  args: { channel: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { channel, paginationOpts }) => {
    return await ctx.db
      .query("messages")
      .withIndex("by_channel", (q) => q.eq("channel", channel))
      .order("desc")
      .paginate(paginationOpts);
  },
});

/** Posts a message as the signed-in user; returns its id. */
export const send = mutation({
  args: { channel: v.string(), body: v.string() },
  handler: async (ctx, { channel, body }) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) {
      throw new Error("Not signed in");
    }
    const author = identity.name ?? identity.email ?? identity.subject;
    return await ctx.db.insert("messages", { channel, body, author });
  },
});
