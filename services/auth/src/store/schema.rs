//! Better Auth's schema (tables `user`, `session`, `account`, `verification`, `jwks` with its
//! camelCase quoted columns) plus convex-edge's own `edge_revocation` log and `edge_meta`.
//!
//! Every statement is idempotent, and none alters what Better Auth created, except adding the
//! nullable `jwks` columns that older Better Auth versions lack.

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
    r#"CREATE TABLE IF NOT EXISTS "edge_revocation" ("sequence" bigserial PRIMARY KEY, "sessionId" text NOT NULL, "cacheKey" text NOT NULL, "reason" text NOT NULL, "revokedAt" timestamptz NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "edge_meta" ("key" text PRIMARY KEY, "value" bigint NOT NULL)"#,
    r#"INSERT INTO "edge_meta" ("key", "value") VALUES ('jwks_version', 0) ON CONFLICT ("key") DO NOTHING"#,
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
    r#"CREATE TABLE IF NOT EXISTS "edge_revocation" ("sequence" integer PRIMARY KEY AUTOINCREMENT, "sessionId" text NOT NULL, "cacheKey" text NOT NULL, "reason" text NOT NULL, "revokedAt" date NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "edge_meta" ("key" text PRIMARY KEY, "value" integer NOT NULL)"#,
    r#"INSERT INTO "edge_meta" ("key", "value") VALUES ('jwks_version', 0) ON CONFLICT ("key") DO NOTHING"#,
];

/// Postgres channels for cross-replica notifications.
pub const REVOCATION_CHANNEL: &str = "edge_revocations";
pub const JWKS_CHANNEL: &str = "edge_jwks";
