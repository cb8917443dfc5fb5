import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  messages: defineTable({
    channel: v.string(),
    body: v.string(),
    author: v.string(),
  }).index("by_channel", ["channel"]),
  tasks: defineTable({
    text: v.string(),
    done: v.boolean(),
    // The owner's tokenIdentifier (issuer|subject).
    owner: v.string(),
  }).index("by_owner", ["owner"]),
  config: defineTable({
    siteName: v.string(),
    defaultChannel: v.string(),
    maxMessageLength: v.number(),
  }),
});
