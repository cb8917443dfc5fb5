//! Better Auth's schema (tables `user`, `session`, `account`, `verification`, `jwks` with its
//! camelCase quoted columns) plus convex-edge's own `edge_revocation` log and `edge_meta`.
//!
//! Every statement is idempotent, and none alters what Better Auth created, except adding the
//! nullable `jwks` columns that older Better Auth versions lack and the triggers below.
//!
//! The session log (`edge_session_log`) is written by triggers, so every writer of the
//! database — our routes, the Better Auth app, an admin's SQL — records a session end in the
//! transaction that ends it. On Postgres a row's `position` is assigned by a deferred
//! constraint trigger at commit, under a transaction-scoped advisory lock held until the
//! transaction's commit is visible: positions are therefore handed out in commit order, and a
//! reader that has seen position `n` can never later see a smaller one commit. A plain
//! `bigserial` would be assigned at insert time, and a transaction that inserts first can commit
//! last. SQLite has one writer at a time, so its insert order is its commit order.

pub const POSTGRES: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS "user" ("id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, "email" text NOT NULL UNIQUE, "emailVerified" boolean NOT NULL, "image" text, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, "updatedAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "session" ("id" text NOT NULL PRIMARY KEY, "expiresAt" timestamptz NOT NULL, "token" text NOT NULL UNIQUE, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, "updatedAt" timestamptz NOT NULL, "ipAddress" text, "userAgent" text, "userId" text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE)"#,
    r#"CREATE TABLE IF NOT EXISTS "account" ("id" text NOT NULL PRIMARY KEY, "accountId" text NOT NULL, "providerId" text NOT NULL, "userId" text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE, "accessToken" text, "refreshToken" text, "idToken" text, "accessTokenExpiresAt" timestamptz, "refreshTokenExpiresAt" timestamptz, "scope" text, "password" text, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, "updatedAt" timestamptz NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "verification" ("id" text NOT NULL PRIMARY KEY, "identifier" text NOT NULL, "value" text NOT NULL, "expiresAt" timestamptz NOT NULL, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, "updatedAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "jwks" ("id" text NOT NULL PRIMARY KEY, "publicKey" text NOT NULL, "privateKey" text NOT NULL, "createdAt" timestamptz NOT NULL, "expiresAt" timestamptz)"#,
    r#"ALTER TABLE "jwks" ADD COLUMN IF NOT EXISTS "alg" text"#,
    r#"ALTER TABLE "jwks" ADD COLUMN IF NOT EXISTS "crv" text"#,
    r#"CREATE INDEX IF NOT EXISTS "session_userId_idx" ON "session" ("userId")"#,
    r#"CREATE INDEX IF NOT EXISTS "account_userId_idx" ON "account" ("userId")"#,
    r#"CREATE INDEX IF NOT EXISTS "verification_identifier_idx" ON "verification" ("identifier")"#,
    // Better Auth's `rateLimit` table (its `storage: "database"` shape): shared by every replica.
    r#"CREATE TABLE IF NOT EXISTS "rateLimit" ("id" text NOT NULL PRIMARY KEY, "key" text NOT NULL UNIQUE, "count" integer NOT NULL, "lastRequest" bigint NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "edge_meta" ("key" text PRIMARY KEY, "value" bigint NOT NULL)"#,
    r#"INSERT INTO "edge_meta" ("key", "value") VALUES ('jwks_version', 0) ON CONFLICT ("key") DO NOTHING"#,
    // The log before triggers wrote it (cache keys only, positions in insert order).
    r#"DROP TABLE IF EXISTS "edge_revocation""#,
    r#"CREATE SEQUENCE IF NOT EXISTS "edge_session_log_position""#,
    r#"CREATE TABLE IF NOT EXISTS "edge_session_log" ("id" bigserial PRIMARY KEY, "position" bigint UNIQUE, "sessionId" text, "userId" text, "reason" text NOT NULL, "cacheKey" text, "revokedAt" timestamptz NOT NULL DEFAULT clock_timestamp(), "committedAt" timestamptz)"#,
    r#"CREATE INDEX IF NOT EXISTS "edge_session_log_committedAt_idx" ON "edge_session_log" ("committedAt")"#,
    r#"CREATE INDEX IF NOT EXISTS "edge_session_log_sessionId_idx" ON "edge_session_log" ("sessionId")"#,
    // At commit: the position, in commit order (see the module comment), and a wake-up for
    // every auth replica (notifications are delivered on commit, one per transaction).
    r#"CREATE OR REPLACE FUNCTION "edge_session_log_commit"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(724110);
  UPDATE "edge_session_log" SET "position" = nextval('edge_session_log_position'), "committedAt" = clock_timestamp() WHERE "id" = NEW."id";
  PERFORM pg_notify('edge_revocations', '');
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_session_log_commit" ON "edge_session_log""#,
    r#"CREATE CONSTRAINT TRIGGER "edge_session_log_commit" AFTER INSERT ON "edge_session_log" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "edge_session_log_commit"()"#,
    // A session ends when its row goes, its expiry moves into the past, or its token or owner
    // is replaced (the old cookie no longer names it); a shortened expiry is logged too, since
    // tokens issued before it may outlive the session.
    r#"CREATE OR REPLACE FUNCTION "edge_session_end"() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  why text;
BEGIN
  IF TG_OP = 'DELETE' THEN
    why := 'deleted';
  ELSIF NEW."expiresAt" <= clock_timestamp() AND OLD."expiresAt" > clock_timestamp() THEN
    why := 'expired';
  ELSIF NEW."expiresAt" < OLD."expiresAt" THEN
    -- Shortened: tokens issued before carry an `exp` the session may not reach.
    why := 'shortened';
  ELSIF NEW."token" IS DISTINCT FROM OLD."token" OR NEW."userId" IS DISTINCT FROM OLD."userId" THEN
    why := 'token-changed';
  ELSE
    RETURN NULL;
  END IF;
  INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES (OLD."id", OLD."userId", why);
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_session_end" ON "session""#,
    r#"CREATE TRIGGER "edge_session_end" AFTER DELETE OR UPDATE OF "expiresAt", "token", "userId" ON "session" FOR EACH ROW EXECUTE FUNCTION "edge_session_end"()"#,
    // TRUNCATE deletes without row triggers: every session and user it removes is logged first.
    r#"CREATE OR REPLACE FUNCTION "edge_session_truncate"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") SELECT "id", "userId", 'deleted' FROM "session";
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_session_truncate" ON "session""#,
    r#"CREATE TRIGGER "edge_session_truncate" BEFORE TRUNCATE ON "session" FOR EACH STATEMENT EXECUTE FUNCTION "edge_session_truncate"()"#,
    r#"CREATE OR REPLACE FUNCTION "edge_user_truncate"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "edge_session_log" ("userId", "reason") SELECT "id", 'user-deleted' FROM "user";
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_user_truncate" ON "user""#,
    r#"CREATE TRIGGER "edge_user_truncate" BEFORE TRUNCATE ON "user" FOR EACH STATEMENT EXECUTE FUNCTION "edge_user_truncate"()"#,
    // A user deleted, or changed in a claim tokens carry: that user's cached tokens go.
    r#"CREATE OR REPLACE FUNCTION "edge_user_change"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO "edge_session_log" ("userId", "reason") VALUES (OLD."id", 'user-deleted');
  ELSIF NEW."name" IS DISTINCT FROM OLD."name" OR NEW."email" IS DISTINCT FROM OLD."email"
     OR NEW."emailVerified" IS DISTINCT FROM OLD."emailVerified" OR NEW."image" IS DISTINCT FROM OLD."image" THEN
    INSERT INTO "edge_session_log" ("userId", "reason") VALUES (OLD."id", 'user-changed');
  END IF;
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_user_change" ON "user""#,
    r#"CREATE TRIGGER "edge_user_change" AFTER DELETE OR UPDATE OF "name", "email", "emailVerified", "image" ON "user" FOR EACH ROW EXECUTE FUNCTION "edge_user_change"()"#,
    // The key set follows the `jwks` table whoever writes it.
    r#"CREATE OR REPLACE FUNCTION "edge_jwks_change"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE "edge_meta" SET "value" = "value" + 1 WHERE "key" = 'jwks_version';
  PERFORM pg_notify('edge_jwks', '');
  RETURN NULL;
END $$"#,
    r#"DROP TRIGGER IF EXISTS "edge_jwks_change" ON "jwks""#,
    r#"CREATE TRIGGER "edge_jwks_change" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "jwks" FOR EACH STATEMENT EXECUTE FUNCTION "edge_jwks_change"()"#,
];

pub const SQLITE: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS "user" ("id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, "email" text NOT NULL UNIQUE, "emailVerified" integer NOT NULL, "image" text, "createdAt" date NOT NULL, "updatedAt" date NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "session" ("id" text NOT NULL PRIMARY KEY, "expiresAt" date NOT NULL, "token" text NOT NULL UNIQUE, "createdAt" date NOT NULL, "updatedAt" date NOT NULL, "ipAddress" text, "userAgent" text, "userId" text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE)"#,
    r#"CREATE TABLE IF NOT EXISTS "account" ("id" text NOT NULL PRIMARY KEY, "accountId" text NOT NULL, "providerId" text NOT NULL, "userId" text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE, "accessToken" text, "refreshToken" text, "idToken" text, "accessTokenExpiresAt" date, "refreshTokenExpiresAt" date, "scope" text, "password" text, "createdAt" date NOT NULL, "updatedAt" date NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "verification" ("id" text NOT NULL PRIMARY KEY, "identifier" text NOT NULL, "value" text NOT NULL, "expiresAt" date NOT NULL, "createdAt" date NOT NULL, "updatedAt" date NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "jwks" ("id" text NOT NULL PRIMARY KEY, "publicKey" text NOT NULL, "privateKey" text NOT NULL, "createdAt" date NOT NULL, "expiresAt" date, "alg" text, "crv" text)"#,
    r#"CREATE INDEX IF NOT EXISTS "session_userId_idx" ON "session" ("userId")"#,
    r#"CREATE INDEX IF NOT EXISTS "account_userId_idx" ON "account" ("userId")"#,
    r#"CREATE INDEX IF NOT EXISTS "verification_identifier_idx" ON "verification" ("identifier")"#,
    r#"CREATE TABLE IF NOT EXISTS "rateLimit" ("id" text NOT NULL PRIMARY KEY, "key" text NOT NULL UNIQUE, "count" integer NOT NULL, "lastRequest" bigint NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "edge_meta" ("key" text PRIMARY KEY, "value" integer NOT NULL)"#,
    r#"INSERT INTO "edge_meta" ("key", "value") VALUES ('jwks_version', 0) ON CONFLICT ("key") DO NOTHING"#,
    r#"DROP TABLE IF EXISTS "edge_revocation""#,
    // Dates as sqlx writes them (RFC 3339, `+00:00`); `julianday` reads both that
    // and the ISO form other writers use.
    r#"CREATE TABLE IF NOT EXISTS "edge_session_log" ("id" integer PRIMARY KEY AUTOINCREMENT, "position" integer UNIQUE, "sessionId" text, "userId" text, "reason" text NOT NULL, "cacheKey" text, "revokedAt" date NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')), "committedAt" date)"#,
    r#"CREATE INDEX IF NOT EXISTS "edge_session_log_committedAt_idx" ON "edge_session_log" ("committedAt")"#,
    r#"CREATE INDEX IF NOT EXISTS "edge_session_log_sessionId_idx" ON "edge_session_log" ("sessionId")"#,
    // One writer at a time: the insert order is the commit order.
    r#"CREATE TRIGGER IF NOT EXISTS "edge_session_log_commit" AFTER INSERT ON "edge_session_log" BEGIN UPDATE "edge_session_log" SET "position" = NEW."id", "committedAt" = NEW."revokedAt" WHERE "id" = NEW."id"; END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_session_deleted" AFTER DELETE ON "session" BEGIN INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES (OLD."id", OLD."userId", 'deleted'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_session_expired" AFTER UPDATE OF "expiresAt" ON "session" WHEN julianday(NEW."expiresAt") <= julianday('now') AND julianday(OLD."expiresAt") > julianday('now') BEGIN INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES (OLD."id", OLD."userId", 'expired'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_session_shortened" AFTER UPDATE OF "expiresAt" ON "session" WHEN julianday(NEW."expiresAt") < julianday(OLD."expiresAt") AND julianday(NEW."expiresAt") > julianday('now') BEGIN INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES (OLD."id", OLD."userId", 'shortened'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_session_token_changed" AFTER UPDATE OF "token", "userId" ON "session" WHEN NEW."token" IS NOT OLD."token" OR NEW."userId" IS NOT OLD."userId" BEGIN INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES (OLD."id", OLD."userId", 'token-changed'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_user_deleted" AFTER DELETE ON "user" BEGIN INSERT INTO "edge_session_log" ("userId", "reason") VALUES (OLD."id", 'user-deleted'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_user_changed" AFTER UPDATE OF "name", "email", "emailVerified", "image" ON "user" WHEN NEW."name" IS NOT OLD."name" OR NEW."email" IS NOT OLD."email" OR NEW."emailVerified" IS NOT OLD."emailVerified" OR NEW."image" IS NOT OLD."image" BEGIN INSERT INTO "edge_session_log" ("userId", "reason") VALUES (OLD."id", 'user-changed'); END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_jwks_inserted" AFTER INSERT ON "jwks" BEGIN UPDATE "edge_meta" SET "value" = "value" + 1 WHERE "key" = 'jwks_version'; END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_jwks_updated" AFTER UPDATE ON "jwks" BEGIN UPDATE "edge_meta" SET "value" = "value" + 1 WHERE "key" = 'jwks_version'; END"#,
    r#"CREATE TRIGGER IF NOT EXISTS "edge_jwks_deleted" AFTER DELETE ON "jwks" BEGIN UPDATE "edge_meta" SET "value" = "value" + 1 WHERE "key" = 'jwks_version'; END"#,
];

/// Postgres channels for cross-replica notifications.
pub const REVOCATION_CHANNEL: &str = "edge_revocations";
pub const JWKS_CHANNEL: &str = "edge_jwks";
