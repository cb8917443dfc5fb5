import { v } from "convex/values";
import { mutation, query } from "./_generated/server.js";

/** The caller's own tasks; `[]` when anonymous. */
export const list = query({
  args: {},
  handler: async (ctx) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) {
      return [];
    }
    const tasks = await ctx.db
      .query("tasks")
      .withIndex("by_owner", (q) => q.eq("owner", identity.tokenIdentifier))
      .collect();
    return tasks.map(({ _id, _creationTime, text, done }) => ({ _id, _creationTime, text, done }));
  },
});

/** Adds a task for the signed-in user; returns its id. */
export const add = mutation({
  args: { text: v.string() },
  handler: async (ctx, { text }) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) {
      throw new Error("Not signed in");
    }
    return await ctx.db.insert("tasks", { text, done: false, owner: identity.tokenIdentifier });
  },
});

/** Flips a task of the signed-in user. */
export const toggle = mutation({
  args: { id: v.string() },
  handler: async (ctx, { id }) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) {
      throw new Error("Not signed in");
    }
    const taskId = ctx.db.normalizeId("tasks", id);
    const task = taskId === null ? null : await ctx.db.get(taskId);
    if (task === null || task.owner !== identity.tokenIdentifier) {
      throw new Error("Task not found");
    }
    await ctx.db.patch(task._id, { done: !task.done });
    return null;
  },
});
