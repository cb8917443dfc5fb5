// Verifies a JWT with `jose` under Convex's customJwt rules: RS256/ES256 only, `kid` required,
// `iss`, `aud`, `exp`, `iat` and `sub` required. Usage:
//   node jose-verify.mjs '{"jwksUrl", "jwt", "issuer", "audience"}'
// Prints {"ok":true,"header":…,"payload":…} or {"ok":false,"error":…}.
import { createRemoteJWKSet, jwtVerify, decodeProtectedHeader } from "jose";

const { jwksUrl, jwt, issuer, audience } = JSON.parse(process.argv[2]);
try {
  const header = decodeProtectedHeader(jwt);
  if (!header.kid) throw new Error("Convex requires a kid");
  const { payload, protectedHeader } = await jwtVerify(jwt, createRemoteJWKSet(new URL(jwksUrl)), {
    issuer,
    audience,
    algorithms: ["RS256", "ES256"],
    requiredClaims: ["iss", "sub", "aud", "exp", "iat"],
  });
  console.log(JSON.stringify({ ok: true, header: protectedHeader, payload }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error?.code ?? error?.message ?? error) }));
}
