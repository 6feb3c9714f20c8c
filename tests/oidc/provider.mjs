// A local OpenID Connect provider for pgtrail's tests and `pgtrail quickstart --oidc`.
//
// It runs the real `oidc-provider` package (OpenID Certified) with:
// - a confidential client `pgtrail` (secret `pgtrail-secret`) using the authorization code
//   flow with PKCE, and the resource `urn:pgtrail:proxy` whose access tokens are JWTs;
// - accounts for any login name: `name`, `email` (`<login>@example.com`) and `groups`
//   (alice: dba, engineering; bob: analysts; carol: analysts, auditors);
// - signing keys it generates at start; the RSA private key is written to
//   `<dir>/signing-key.pem` so tests can also sign tokens the provider would never issue
//   (with `public-key.pem`, and `other-key.pem`, a key it never published).
//
// A person normally signs in through a browser. To get tokens without one, the provider
// serves `GET /dev/token?user=alice[&ttl=SECONDS]`: it runs the whole authorization code
// flow against its own /auth, interaction and /token endpoints over HTTP, signing `user`
// in, and answers what the token endpoint returned ({id_token, access_token, ...}).
//
// Usage: node provider.mjs [--port N] [--dir DIR]
// Prints one JSON line when ready: {"issuer", "kid", "key_file"}.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

import Provider from 'oidc-provider';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const port = Number(option('--port', '0'));
const dir = option('--dir', fs.mkdtempSync(path.join(os.tmpdir(), 'pgtrail-oidc-')));

const CLIENT_ID = 'pgtrail';
const CLIENT_SECRET = 'pgtrail-secret';
const RESOURCE = 'urn:pgtrail:proxy';
const SCOPE = 'openid profile email groups';
const GROUPS = { alice: ['dba', 'engineering'], bob: ['analysts'], carol: ['analysts', 'auditors'] };

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = crypto.randomBytes(8).toString('hex');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
const keyFile = path.join(dir, 'signing-key.pem');
fs.writeFileSync(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
// For tests of forged tokens: the public key (an attacker has it) and a key the provider
// never published.
fs.writeFileSync(path.join(dir, 'public-key.pem'), crypto.createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }));
const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
fs.writeFileSync(path.join(dir, 'other-key.pem'), other.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });

// The lifetime of the next tokens issued (set per /dev/token call, which run one at a time).
let nextTtl = 600;

const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;
const redirectUri = `${issuer}/dev/callback`;

function claimsOf(login) {
  const name = login.charAt(0).toUpperCase() + login.slice(1);
  return {
    sub: login,
    name,
    preferred_username: login,
    email: `${login}@example.com`,
    email_verified: true,
    groups: GROUPS[login] ?? [],
  };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  jwks: { keys: [jwk] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  // The ID token carries the claims of the granted scopes, not only /userinfo.
  conformIdTokenClaims: false,
  findAccount: (_ctx, id) => ({ accountId: id, claims: () => claimsOf(id) }),
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: SCOPE,
        audience: RESOURCE,
        accessTokenFormat: 'jwt',
        accessTokenTTL: nextTtl,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const { name, email, groups } = claimsOf(token.accountId);
    return { name, email, groups };
  },
  ttl: {
    IdToken: () => nextTtl,
    AccessToken: () => nextTtl,
    AuthorizationCode: 60,
    Interaction: 60,
    Session: 600,
    Grant: 600,
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
});

// The "browser" part: sign the login hint in and grant what was asked, without a form.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name === 'login') {
    const login = details.params.login_hint;
    if (!login) ctx.throw(400, 'login_hint is required');
    return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
  }
  const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, {
    mergeWithLastSubmission: true,
  });
});

// One flow at a time, so `nextTtl` applies to that flow's tokens.
let queue = Promise.resolve();

async function authorizationCodeFlow(user, ttl) {
  nextTtl = ttl;
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const cookies = new Map();
  const authorize = new URL(`${issuer}/auth`);
  authorize.search = new URLSearchParams({
    client_id: CLIENT_ID,
    response_type: 'code',
    scope: SCOPE,
    redirect_uri: redirectUri,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    login_hint: user,
    resource: RESOURCE,
    nonce: crypto.randomBytes(8).toString('hex'),
    state: crypto.randomBytes(8).toString('hex'),
  }).toString();
  let url = authorize.toString();
  for (let hop = 0; hop < 10; hop += 1) {
    if (url.startsWith(redirectUri)) {
      const params = new URL(url).searchParams;
      if (params.get('error')) throw new Error(`${params.get('error')}: ${params.get('error_description')}`);
      const response = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: {
          authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`,
          'content-type': 'application/x-www-form-urlencoded',
        },
        body: new URLSearchParams({
          grant_type: 'authorization_code',
          code: params.get('code'),
          redirect_uri: redirectUri,
          code_verifier: verifier,
          resource: RESOURCE,
        }),
      });
      return { status: response.status, body: await response.json() };
    }
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const location = response.headers.get('location');
    if (!location) throw new Error(`${url} answered ${response.status} without a redirect`);
    url = new URL(location, url).toString();
  }
  throw new Error('too many redirects');
}

server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname !== '/dev/token') return provider.callback()(req, res);
  const user = url.searchParams.get('user');
  const ttl = Number(url.searchParams.get('ttl') ?? '600');
  if (!user || !(ttl > 0)) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    return res.end('usage: /dev/token?user=NAME[&ttl=SECONDS]\n');
  }
  const run = queue.then(() => authorizationCodeFlow(user, ttl));
  queue = run.catch(() => {});
  try {
    const { status, body } = await run;
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(body)}\n`);
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`${error.message}\n`);
  }
});

process.stdout.write(`${JSON.stringify({ issuer, kid, key_file: keyFile })}\n`);
