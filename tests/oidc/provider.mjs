// A real OpenID provider (oidc-provider, pinned in tests/oidc/package-lock.json)
// for warren's OpenID Connect login tests; started by tests/src/oidc.rs.
//
//   NODE_PATH=target/oidc-node/node_modules \
//     node tests/oidc/provider.mjs --port P --redirect-uri URI [--redirect-uri URI ...]
//       [--node-modules DIR]
//
// The packages come from tests/oidc/install.sh (default target/oidc-node). Node's
// ES module loader ignores NODE_PATH, so this script resolves `oidc-provider` and
// `jose` itself: from --node-modules DIR, else from each NODE_PATH entry, else
// from next to this file (a copy placed in the install dir works as is).
//
// Issuer http://127.0.0.1:P. One client, `warren` / `warren-oidc-test-secret`
// (client_secret_basic; client_secret_post is accepted too), code flow only,
// PKCE (S256) required. Scopes openid, profile, email (and groups); the ID token
// carries the claims itself (conformIdTokenClaims: false), `groups` included.
// Accounts: alice / alice-password, bob / bob-password.
//
// The login flow a client sees (no consent step: every grant is given):
//   GET  /auth?...                   -> 303 /interaction/<uid>  (cookies _interaction, _interaction_resume)
//   GET  /interaction/<uid>          -> 200 HTML login form
//   POST /interaction/<uid>/login    -> 303 http://127.0.0.1:P/auth/<uid>   (login=..&password=..; wrong: 401)
//   GET  /auth/<uid>                 -> 303 <redirect_uri>?code=..&state=..&iss=..   (cookie _session)
//   POST /token                      -> 200 {access_token, id_token, ...}
//
// Test hooks:
//   POST /test/tamper {"kind": K}   the next token response carrying an ID token gets
//                                   a malicious one instead (see TAMPER_KINDS); {"kind": null}
//                                   clears it. Answers {"kind": <the pending kind>}.
//   GET  /test/tamper               {"kind": <pending or null>, "applied": [kinds applied so far]}
//   GET  /test/public-key.pem       the signing key's public key (SPKI PEM), the HMAC key
//                                   of the `hs256-rsa-public` kind.
//
// Prints exactly one line on stdout, `READY http://127.0.0.1:P`, once listening;
// everything else goes to stderr. Exits when stdin closes (a test's dropped child
// never lingers) and on SIGTERM / SIGINT.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as path from 'node:path';
import * as querystring from 'node:querystring';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

// stdout is the READY line only.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const log = (...args) => console.error('[oidc-provider]', ...args);

function fail(message) {
  console.error(`provider.mjs: ${message}`);
  process.exit(2);
}

// ---- arguments ------------------------------------------------------------------
let port;
const redirectUris = [];
let nodeModules;
{
  const args = process.argv.slice(2);
  while (args.length) {
    const arg = args.shift();
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      const v = inline ?? args.shift();
      if (v === undefined) fail(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--port': port = Number(value()); break;
      case '--redirect-uri': redirectUris.push(value()); break;
      case '--node-modules': nodeModules = value(); break;
      default: fail(`unknown argument '${arg}' (usage: provider.mjs --port P --redirect-uri URI [--redirect-uri URI ...] [--node-modules DIR])`);
    }
  }
  if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('--port P (1-65535) is required');
  if (!redirectUris.length) fail('at least one --redirect-uri is required');
}

// ---- modules ----------------------------------------------------------------------
async function load(name) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dirs = [
    ...(nodeModules ? [nodeModules] : []),
    ...(process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean),
    path.join(here, 'node_modules'),
  ];
  for (const dir of dirs) {
    let resolved;
    try {
      resolved = createRequire(path.join(path.resolve(dir), 'resolve-from-here.js')).resolve(name);
    } catch {
      continue;
    }
    return import(pathToFileURL(resolved).href);
  }
  try {
    return await import(name);
  } catch (cause) {
    fail(`cannot load '${name}' (looked in ${dirs.join(', ')}): run tests/oidc/install.sh and pass --node-modules DIR or NODE_PATH (${cause.message})`);
  }
  return undefined;
}

const { default: Provider } = await load('oidc-provider');
const jose = await load('jose');

// ---- keys -------------------------------------------------------------------------
const KID = 'test-key-1';
const signing = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...signing.privateKey.export({ format: 'jwk' }), kid: KID, alg: 'RS256', use: 'sig' };
const publicKeyPem = signing.publicKey.export({ type: 'spki', format: 'pem' });
const signingKey = await jose.importJWK(signingJwk, 'RS256');
// An attacker's key: not in the JWKS.
const otherKey = await jose.importJWK(
  crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  'RS256',
);

// ---- accounts ---------------------------------------------------------------------
const ACCOUNTS = [
  {
    login: 'alice',
    password: 'alice-password',
    claims: {
      sub: 'alice-sub-0001',
      preferred_username: 'alice',
      name: 'Alice Example',
      email: 'alice@example.test',
      email_verified: true,
      groups: ['warren-admins', 'staff'],
    },
  },
  {
    login: 'bob',
    password: 'bob-password',
    claims: {
      sub: 'bob-sub-0002',
      preferred_username: 'bob',
      name: 'Bob Example',
      email: 'bob@example.test',
      email_verified: true,
      groups: ['staff'],
    },
  },
];

const CLIENT_ID = 'warren';
const issuer = `http://127.0.0.1:${port}`;

// ---- provider ---------------------------------------------------------------------
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: 'warren-oidc-test-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      response_types: ['code'],
      grant_types: ['authorization_code'],
      redirect_uris: redirectUris,
      id_token_signed_response_alg: 'RS256',
    },
  ],
  jwks: { keys: [signingJwk] },
  cookies: { keys: ['warren-oidc-test-cookie-key'] },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid'],
  responseTypes: ['code'],
  conformIdTokenClaims: false,
  // Explicit lifetimes (seconds), also silencing oidc-provider's notices.
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  async findAccount(_ctx, id) {
    const account = ACCOUNTS.find((a) => a.claims.sub === id);
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ ...account.claims }) };
  },
  // No consent step: the warren client gets every scope and claim it asks for.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    if (!client || !session?.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' ') || 'openid');
    const claims = [...ctx.oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
  renderError(ctx, out, error) {
    log('error page:', out, error?.stack || error);
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>oidc error</title><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`;
  },
});

for (const event of ['server_error', 'authorization.error', 'grant.error', 'introspection.error', 'revocation.error', 'userinfo.error']) {
  provider.on(event, (ctx, error) => {
    log(`${event}: ${error?.name} ${error?.message}${error?.error_description ? ` (${error.error_description})` : ''}`,
      error?.cause ? `cause: ${error.cause.message}` : '', ctx?.method ?? '', ctx?.path ?? '');
  });
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// ---- tampering with the next ID token ----------------------------------------------
const TAMPER_KINDS = new Set([
  'other-aud', // aud = "someone-else" (signed with the real key)
  'expired', // exp and iat an hour in the past
  'wrong-nonce', // another nonce
  'alg-none', // header {"alg":"none"}, empty signature
  'hs256-rsa-public', // HS256, HMAC key = the signing key's public key (SPKI PEM): key confusion
  'unknown-kid', // signed by another RSA key, a kid not in the JWKS
  'other-key-same-kid', // signed by another RSA key, the real key's kid
  'wrong-issuer', // iss = https://wrong-issuer.example.test
  'future-iat', // iat an hour ahead (exp two hours ahead)
]);
let pendingTamper = null;
const appliedTampers = [];

const b64url = (data) => Buffer.from(data).toString('base64url');

async function sign(header, payload, key) {
  return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

async function tamper(kind, idToken) {
  const realHeader = jose.decodeProtectedHeader(idToken);
  const payload = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'RS256', kid: realHeader.kid };
  switch (kind) {
    case 'other-aud':
      return sign(header, { ...payload, aud: 'someone-else' }, signingKey);
    case 'expired':
      return sign(header, { ...payload, iat: now - 3660, exp: now - 3600 }, signingKey);
    case 'wrong-nonce':
      return sign(header, { ...payload, nonce: `not-the-nonce-${crypto.randomUUID()}` }, signingKey);
    case 'wrong-issuer':
      return sign(header, { ...payload, iss: 'https://wrong-issuer.example.test' }, signingKey);
    case 'future-iat':
      return sign(header, { ...payload, iat: now + 3600, exp: now + 7200 }, signingKey);
    case 'alg-none':
      return `${b64url(JSON.stringify({ alg: 'none' }))}.${b64url(JSON.stringify(payload))}.`;
    case 'hs256-rsa-public':
      return sign({ alg: 'HS256', kid: realHeader.kid }, payload, new TextEncoder().encode(publicKeyPem));
    case 'unknown-kid':
      return sign({ alg: 'RS256', kid: 'unknown-key-9999' }, payload, otherKey);
    case 'other-key-same-kid':
      return sign({ alg: 'RS256', kid: KID }, payload, otherKey);
    default:
      throw new Error(`unknown tamper kind ${kind}`);
  }
}

// Wraps the token endpoint: replaces the ID token it issued when a tamper is pending.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'token' && ctx.status === 200 && pendingTamper
      && ctx.body && typeof ctx.body === 'object' && typeof ctx.body.id_token === 'string') {
    const kind = pendingTamper;
    pendingTamper = null;
    ctx.body = { ...ctx.body, id_token: await tamper(kind, ctx.body.id_token) };
    appliedTampers.push(kind);
    log(`tampered the ID token of this token response: ${kind}`);
  }
});

// ---- own routes: the login page and the test hooks ------------------------------------
function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>
`;
}

function loginForm(uid, message) {
  return page('Sign in to the test provider', `${message ? `<p role="alert">${escapeHtml(message)}</p>\n` : ''}<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Login <input name="login" autocomplete="username" autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>`);
}

// Every grant is given without asking (should loadExistingGrant not have covered it).
async function giveConsent(ctx, details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ clientId: params.client_id, accountId: session.accountId });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  return provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function redirect303(ctx, to) {
  ctx.redirect(to);
  ctx.status = 303;
}

provider.use(async (ctx, next) => {
  const interaction = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (interaction) {
    const [, uid, login] = interaction;
    ctx.set('Cache-Control', 'no-store');
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (error) {
      log(`interaction ${uid}: ${error.message}`);
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('No such sign-in', `<p>${escapeHtml(error.message)}</p>`);
      return;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('No such sign-in', '<p>the interaction cookie is for another sign-in</p>');
      return;
    }
    if (!login && ctx.method === 'GET') {
      if (details.prompt.name === 'consent') {
        redirect303(ctx, await giveConsent(ctx, details));
        return;
      }
      ctx.type = 'html';
      ctx.body = loginForm(uid);
      return;
    }
    if (login && ctx.method === 'POST') {
      if (!ctx.is('application/x-www-form-urlencoded')) {
        ctx.status = 415;
        ctx.body = 'expected an application/x-www-form-urlencoded form';
        return;
      }
      const form = querystring.parse(await readBody(ctx.req));
      const account = ACCOUNTS.find((a) => a.login === form.login && a.password === form.password);
      if (!account) {
        log(`interaction ${uid}: wrong login or password for '${form.login}'`);
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginForm(uid, 'Wrong login or password.');
        return;
      }
      log(`interaction ${uid}: ${account.login} signed in`);
      const returnTo = await provider.interactionResult(
        ctx.req,
        ctx.res,
        { login: { accountId: account.claims.sub } },
        { mergeWithLastSubmission: false },
      );
      redirect303(ctx, returnTo);
      return;
    }
    ctx.status = 405;
    return;
  }

  if (ctx.path === '/test/tamper') {
    if (ctx.method === 'POST') {
      let kind;
      try {
        ({ kind } = JSON.parse(await readBody(ctx.req)));
      } catch (error) {
        ctx.status = 400;
        ctx.body = { error: `expected {"kind": K}: ${error.message}` };
        return;
      }
      if (kind !== null && !TAMPER_KINDS.has(kind)) {
        ctx.status = 400;
        ctx.body = { error: `unknown kind ${JSON.stringify(kind)}; one of ${[...TAMPER_KINDS].join(', ')} or null` };
        return;
      }
      pendingTamper = kind;
      log(`tamper: next ID token ${kind ?? 'untouched'}`);
      ctx.body = { kind: pendingTamper };
      return;
    }
    if (ctx.method === 'GET') {
      ctx.body = { kind: pendingTamper, applied: appliedTampers };
      return;
    }
    ctx.status = 405;
    return;
  }

  if (ctx.path === '/test/public-key.pem' && ctx.method === 'GET') {
    ctx.type = 'application/x-pem-file';
    ctx.body = publicKeyPem;
    return;
  }

  await next();
});

// ---- serve ---------------------------------------------------------------------------
const server = http.createServer(provider.callback());
server.on('error', (error) => fail(`cannot listen on 127.0.0.1:${port}: ${error.message}`));

function shutdown(why) {
  log(`exiting: ${why}`);
  server.close();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.stdin.on('end', () => shutdown('stdin closed'));
process.stdin.on('close', () => shutdown('stdin closed'));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();

server.listen(port, '127.0.0.1', () => {
  log(`issuer ${issuer}, client ${CLIENT_ID}, redirect URIs ${redirectUris.join(' ')}`);
  process.stdout.write(`READY ${issuer}\n`);
});
