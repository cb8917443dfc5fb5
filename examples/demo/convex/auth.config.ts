/* Convex's auth configuration for tokens from convex-edge's auth service. Print the values for
 * your deployment with `convex-edge convex-auth-config`; with static keys, `jwks` is a data: URI.
 * Convex provides `process.env` (deployment environment variables) to this file. */
declare const process: { env: Record<string, string | undefined> };

export default {
  providers: [
    {
      type: "customJwt",
      issuer: process.env.CONVEX_SITE_URL ?? "http://localhost:8080",
      applicationID: "convex",
      algorithm: "RS256",
      jwks: process.env.JWKS_URL ?? "http://localhost:8080/api/auth/convex/jwks",
    },
  ],
};
