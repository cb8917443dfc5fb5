// The site (the gateway) as the node scripts use it: Better Auth accounts by email and password,
// and Convex tokens from the token route.
const password = "correct horse battery staple";

// Signs up `email` (display name `name`); the session cookie (`name=value`).
export async function signUp(site, email, name) {
  return session(site, "sign-up", { name, email, password });
}

// Signs `email` in again; the new session cookie.
export async function signIn(site, email) {
  return session(site, "sign-in", { email, password });
}

async function session(site, route, body) {
  const response = await fetch(`${site}/api/auth/${route}/email`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: site },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${route} ${response.status}`);
  return response.headers.get("set-cookie").split(";")[0];
}

// A convex-js `fetchToken` for the session `cookie`: its Convex JWT, or null once signed out.
export function tokens(site, cookie) {
  return async () => {
    const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
    return response.ok ? (await response.json()).token : null;
  };
}
