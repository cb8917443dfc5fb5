// convex-edge page client: keeps a server-rendered page live over the Convex sync protocol.
//
// The page embeds `<script id="convex-edge-state" type="application/json">` with the query
// service's URL and every query of the page (path, args, options, server-rendered value). This
// script subscribes to the `subscribe: true` ones, fetches `server: false, subscribe: false`
// ones once over HTTP, and calls the page's renderers (`convexEdge.on(name, fn)`) when a value
// changes. The token comes from the gateway's token route, reused for 10 s and never past its
// expiry, and is refreshed on the socket before it expires.
(() => {
  "use strict";
  const CLIENT_VERSION = "1.48.0";
  const TOKEN_REUSE_MS = 10_000;
  const TOKEN_STORAGE = "convex-edge:token";
  const ZERO_TS = "AAAAAAAAAAA=";

  const renderers = new Map(); // query name -> [fn(value, error)]
  const subscriptions = new Map(); // query key -> {queryId, path, args, names, value, error}
  const pendingMutations = new Map(); // requestId -> {resolve, reject, ts}
  const outbox = []; // frames sent before the socket opened
  let config = null;
  let socket = null;
  let connectionCount = 0;
  let lastCloseReason = null;
  let backoff = 100;
  let nextQueryId = 0;
  let nextRequestId = 0;
  let querySetVersion = 0;
  let identityVersion = 0;
  let version = { querySet: 0, identity: 0, ts: ZERO_TS };
  let chunks = [];
  let refreshTimer = null;
  let authFailed = false;
  const sessionId = crypto.randomUUID();

  function setStatus(status) {
    document.documentElement.dataset.convexEdge = status;
  }

  function decodeBase64(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  // A Convex timestamp: base64 of u64 little-endian nanoseconds.
  function decodeTs(b64) {
    return new DataView(decodeBase64(b64).buffer).getBigUint64(0, true);
  }

  // Convex encoded JSON to plain values, as the `json` format exports them.
  function toJson(v) {
    if (Array.isArray(v)) return v.map(toJson);
    if (v === null || typeof v !== "object") return v;
    const keys = Object.keys(v);
    if (keys.length === 1 && typeof v[keys[0]] === "string") {
      const view = () => new DataView(decodeBase64(v[keys[0]]).buffer);
      if (keys[0] === "$integer") {
        const n = view().getBigInt64(0, true);
        return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)
          ? Number(n)
          : n.toString();
      }
      if (keys[0] === "$float") return view().getFloat64(0, true);
      if (keys[0] === "$bytes") return v.$bytes;
    }
    const out = {};
    for (const k of keys) out[k] = toJson(v[k]);
    return out;
  }

  function claims(jwt) {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  }

  // The user's token: the one fetched less than 10 s ago for the same user if it is not about
  // to expire, else a fresh one. `null` when signed out.
  async function token(fresh) {
    if (!config.signedIn) return null;
    const now = Date.now();
    if (!fresh) {
      try {
        const saved = JSON.parse(sessionStorage.getItem(TOKEN_STORAGE));
        if (
          saved &&
          saved.sub === config.userId &&
          now - saved.fetchedAt < TOKEN_REUSE_MS &&
          saved.exp * 1000 > now + 5000
        ) {
          return saved.token;
        }
      } catch (_) {
        // Storage unavailable or garbage: fetch.
      }
    }
    const response = await fetch(config.tokenUrl, { credentials: "same-origin" });
    if (!response.ok) {
      forgetToken();
      return null;
    }
    const jwt = (await response.json()).token;
    const c = claims(jwt);
    try {
      sessionStorage.setItem(
        TOKEN_STORAGE,
        JSON.stringify({ token: jwt, sub: c.sub, exp: c.exp, fetchedAt: now }),
      );
    } catch (_) {
      // Not persisted: the next call fetches again.
    }
    scheduleRefresh(c.exp);
    return jwt;
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_STORAGE);
    } catch (_) {
      // Nothing stored.
    }
  }

  // Re-authenticates the socket a minute before the token expires.
  function scheduleRefresh(exp) {
    clearTimeout(refreshTimer);
    const delay = Math.max(exp * 1000 - Date.now() - 60_000, 5_000);
    refreshTimer = setTimeout(async () => {
      const jwt = await token(true);
      if (jwt && socket && socket.readyState === WebSocket.OPEN) send(authenticate(jwt));
    }, delay);
  }

  function authenticate(jwt) {
    const baseVersion = identityVersion++;
    return jwt
      ? { type: "Authenticate", baseVersion, tokenType: "User", value: jwt }
      : { type: "Authenticate", baseVersion, tokenType: "None" };
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    else outbox.push(message);
  }

  function keyOf(path, args) {
    const sorted = (v) =>
      Array.isArray(v)
        ? v.map(sorted)
        : v && typeof v === "object"
          ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]))
          : v;
    return path + "|" + JSON.stringify(sorted(args));
  }

  function render(names, value, error) {
    for (const name of names) {
      for (const fn of renderers.get(name) || []) {
        try {
          fn(value === undefined ? undefined : toJson(value), error || null);
        } catch (e) {
          console.error("convex-edge: renderer failed", name, e);
        }
      }
    }
  }

  function sameVersion(a, b) {
    return (
      a.querySet === b.querySet && a.identity === b.identity && decodeTs(a.ts) === decodeTs(b.ts)
    );
  }

  function onTransition(t) {
    if (!sameVersion(t.startVersion, version)) {
      // A gap in the versions: start over on a new socket.
      socket.close(4000, "transition out of order");
      return;
    }
    for (const m of t.modifications) {
      const sub = [...subscriptions.values()].find((s) => s.queryId === m.queryId);
      if (!sub) continue;
      if (m.type === "QueryUpdated") {
        sub.value = m.value;
        sub.error = null;
        render(sub.names, m.value, null);
      } else if (m.type === "QueryFailed") {
        sub.error = m.errorMessage;
        render(sub.names, undefined, m.errorMessage);
      }
    }
    version = t.endVersion;
    const reached = decodeTs(version.ts);
    for (const [id, pending] of pendingMutations) {
      if (pending.ts !== undefined && pending.ts <= reached) {
        pendingMutations.delete(id);
        pending.resolve(pending.result);
      }
    }
    if (version.querySet >= querySetVersion && version.identity >= identityVersion) {
      setStatus("live");
      backoff = 100;
    }
  }

  function onMessage(event) {
    const message = JSON.parse(event.data);
    switch (message.type) {
      case "Transition":
        onTransition(message);
        break;
      case "TransitionChunk":
        chunks.push(message.chunk);
        if (message.partNumber + 1 === message.totalParts) {
          const whole = chunks.join("");
          chunks = [];
          onTransition(JSON.parse(whole));
        }
        break;
      case "MutationResponse": {
        const pending = pendingMutations.get(message.requestId);
        if (!pending) break;
        if (!message.success) {
          pendingMutations.delete(message.requestId);
          pending.reject(new Error(message.result));
        } else {
          pending.result = toJson(message.result);
          pending.ts = decodeTs(message.ts);
          if (pending.ts <= decodeTs(version.ts)) {
            pendingMutations.delete(message.requestId);
            pending.resolve(pending.result);
          }
        }
        break;
      }
      case "AuthError":
        // The token was refused: the next connection fetches a fresh one (or goes anonymous).
        forgetToken();
        authFailed = true;
        socket.close(4001, "auth error");
        break;
      case "FatalError":
        console.error("convex-edge: server error", message.error);
        break;
      default:
        // Ping and anything newer need no answer.
        break;
    }
  }

  async function connect() {
    setStatus(connectionCount === 0 ? "connecting" : "reconnecting");
    const jwt = await token(authFailed);
    // A refused token and no fresh one: the session ended, carry on anonymously.
    if (authFailed && !jwt) config.signedIn = false;
    authFailed = false;
    const url = new URL(config.convexUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.pathname = url.pathname.replace(/\/$/, "") + `/api/${CLIENT_VERSION}/sync`;
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => {
      querySetVersion = 0;
      identityVersion = 0;
      version = { querySet: 0, identity: 0, ts: ZERO_TS };
      chunks = [];
      ws.send(
        JSON.stringify({
          type: "Connect",
          sessionId,
          connectionCount: connectionCount++,
          lastCloseReason,
          clientTs: Date.now(),
        }),
      );
      if (jwt) ws.send(JSON.stringify(authenticate(jwt)));
      const adds = [...subscriptions.values()].map((s) => ({
        type: "Add",
        queryId: s.queryId,
        udfPath: s.path,
        args: [s.args],
      }));
      if (adds.length > 0) {
        const baseVersion = querySetVersion++;
        ws.send(
          JSON.stringify({
            type: "ModifyQuerySet",
            baseVersion,
            newVersion: querySetVersion,
            modifications: adds,
          }),
        );
      } else {
        setStatus("live");
      }
      for (const message of outbox.splice(0)) ws.send(JSON.stringify(message));
    };
    ws.onmessage = onMessage;
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      lastCloseReason = event.reason || "closed";
      // Answers to mutations in flight are lost with the socket.
      for (const [id, pending] of pendingMutations) {
        pendingMutations.delete(id);
        pending.reject(new Error("connection lost; the mutation may not have run"));
      }
      setStatus("reconnecting");
      const delay = backoff * (0.5 + Math.random());
      backoff = Math.min(backoff * 2, 5_000);
      setTimeout(connect, delay);
    };
  }

  // A query over HTTP (for `subscribe: false` queries).
  async function fetchQuery(path, args) {
    const jwt = await token(false);
    const headers = { "Content-Type": "application/json" };
    if (jwt) headers.Authorization = `Bearer ${jwt}`;
    const response = await fetch(new URL("/api/query", config.convexUrl), {
      method: "POST",
      headers,
      body: JSON.stringify({ path, args, format: "convex_encoded_json" }),
    });
    const body = await response.json();
    if (body.status !== "success") throw new Error(body.errorMessage || "query failed");
    return body.value;
  }

  async function authRequest(route, body, next) {
    const response = await fetch(`/api/auth/${route}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    forgetToken();
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error(error.message || `request failed (${response.status})`);
    }
    if (next) window.location.assign(next);
  }

  window.convexEdge = {
    // Calls `fn(value, error)` whenever the named query of the page changes.
    on(name, fn) {
      if (!renderers.has(name)) renderers.set(name, []);
      renderers.get(name).push(fn);
    },
    // The latest value of a named query.
    value(name) {
      const q = config && config.queries[name];
      if (!q) return undefined;
      const sub = subscriptions.get(keyOf(q.path, q.args));
      const v = sub && sub.value !== undefined ? sub.value : q.value;
      return v === undefined ? undefined : toJson(v);
    },
    // Runs a mutation; resolves once the page shows its effect.
    mutation(path, args) {
      return new Promise((resolve, reject) => {
        const requestId = nextRequestId++;
        pendingMutations.set(requestId, { resolve, reject });
        send({ type: "Mutation", requestId, udfPath: path, args: [args || {}] });
      });
    },
    // Fetches a named query again over HTTP and renders it.
    async refresh(name) {
      const q = config.queries[name];
      try {
        const value = await fetchQuery(q.path, q.args);
        q.value = value;
        render([name], value, null);
      } catch (e) {
        render([name], undefined, e.message);
      }
    },
    signUp: (body, next) => authRequest("sign-up/email", body, next),
    signIn: (body, next) => authRequest("sign-in/email", body, next),
    signOut: (next) => authRequest("sign-out", {}, next),
  };

  function start() {
    const element = document.getElementById("convex-edge-state");
    if (!element) return;
    config = JSON.parse(element.textContent);
    for (const [name, q] of Object.entries(config.queries)) {
      if (q.subscribe) {
        const key = keyOf(q.path, q.args);
        let sub = subscriptions.get(key);
        if (!sub) {
          sub = { queryId: nextQueryId++, path: q.path, args: q.args, names: [], value: q.value };
          subscriptions.set(key, sub);
        }
        sub.names.push(name);
      } else if (!q.server) {
        window.convexEdge.refresh(name);
      }
    }
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
