/* Convex's auth configuration for tokens from convex-edge's auth service.
 * `scripts/deploy-demo.sh` sets both variables on the deployment before it deploys, from what
 * `convex-edge convex-auth-config` prints in the auth service's own environment:
 * - CONVEX_EDGE_ISSUER: auth's JWT_ISSUER (the `iss` of every token). Not CONVEX_SITE_URL:
 *   that is the deployment's own HTTP-actions origin, never the site that issues the tokens.
 * - CONVEX_EDGE_JWKS: a JWKS URL the backend itself can reach (in docker compose, auth's
 *   HTTP listener `http://auth:3001/api/auth/jwks`: `localhost` inside the backend's container
 *   is the container), or a data: URI of the static keys.
 * Convex provides `process.env` (deployment environment variables) to this file. */
declare const process: { env: Record<string, string | undefined> };

export default {
  providers: [
    {
      type: "customJwt",
      issuer: process.env.CONVEX_EDGE_ISSUER ?? "http://localhost:8080",
      applicationID: "convex",
      algorithm: "RS256",
      jwks: process.env.CONVEX_EDGE_JWKS ?? "http://auth:3001/api/auth/jwks",
    },
  ],
};
