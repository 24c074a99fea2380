// A real OpenID provider (npm `oidc-provider`) for Warden's tests.
//
// Workloads get JWT access tokens through the client credentials grant, the way a
// CI job or agent would. Each client's groups go into a `groups` claim. People log in
// through the public client `warden-cli` (authorization code with PKCE, or the device
// flow), and into the web console through `warden-console`. The interaction pages
// finish on their own as the account named by `login_hint`, else as the one set with
// GET /test/next-account?name=..., so a test can play the browser with plain HTTP, or
// drive a real one without typing. Prints one JSON line `{"issuer": ...}` once it
// listens; the port is free-chosen unless PORT is set.
import http from 'node:http';
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const CLIENTS = {
  'ci-deployer': { secret: 'ci-deployer-secret', groups: ['dba', 'ci'], ttl: 600 },
  'dev-alice': { secret: 'dev-alice-secret', groups: ['developers'], ttl: 600 },
  'short-lived': { secret: 'short-lived-secret', groups: ['dba'], ttl: 2 },
  // Long enough to open sessions with, short enough to watch them end.
  'ten-seconds': { secret: 'ten-seconds-secret', groups: ['dba'], ttl: 10 },
};

// People, with their groups.
const ACCOUNTS = {
  alice: ['dba', 'developers'],
  bob: ['sre'],
};
// Lifetime of people's access tokens (short in tests of expiry).
const USER_TOKEN_TTL = Number(process.env.USER_TOKEN_TTL || 600);
let nextAccount = 'alice';

async function signingKeys() {
  const keys = [];
  for (const [alg, kid] of [['RS256', 'rsa-1'], ['ES256', 'ec-1']]) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true });
    keys.push({ ...(await exportJWK(privateKey)), alg, kid, use: 'sig' });
  }
  return keys;
}

// When a test process starts the provider, it exits as soon as that process closes
// our stdin (the test binary ended), so no provider outlives its tests.
if (process.env.EXIT_WITH_STDIN) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

const server = http.createServer();
server.listen(Number(process.env.PORT || 0), '127.0.0.1', async () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: await signingKeys() },
    clients: [
      ...Object.entries(CLIENTS).map(([id, c]) => ({
        client_id: id,
        client_secret: c.secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
        scope: 'api',
      })),
      {
        client_id: 'warden-cli',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        // Native clients' loopback redirects may use any port (RFC 8252 7.3).
        redirect_uris: ['http://127.0.0.1/callback'],
        scope: 'openid offline_access api',
      },
      {
        // The web console: a confidential client (the gateway exchanges the code).
        // Registered as native so its loopback redirect may use any port, as the
        // tests' gateways listen on free ports.
        client_id: 'warden-console',
        client_secret: 'warden-console-secret',
        application_type: 'native',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/auth/callback'],
        scope: 'openid offline_access api',
      },
    ],
    scopes: ['openid', 'offline_access', 'api'],
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:warden',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: CLIENTS[client.clientId]?.ttl ?? USER_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: ctx.oidc.params?.alg === 'ES256' ? 'ES256' : 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => ({
      groups: token.accountId ? (ACCOUNTS[token.accountId] ?? []) : (CLIENTS[token.clientId]?.groups ?? []),
    }),
  });
  provider.on('server_error', (ctx, err) => console.error('oidc server_error', err));
  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/test/next-account') {
      nextAccount = url.searchParams.get('name');
      res.end('ok');
      return;
    }
    if (url.pathname.startsWith('/interaction/')) {
      // Login and consent, done at once as the chosen account.
      try {
        const details = await provider.interactionDetails(req, res);
        const accountId = details.params.login_hint || nextAccount;
        const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
        grant.addOIDCScope(String(details.params.scope || 'openid'));
        grant.addResourceScope('urn:warden', 'api');
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } });
      } catch (err) {
        res.statusCode = 500;
        res.end(String(err));
      }
      return;
    }
    callback(req, res);
  });
  console.log(JSON.stringify({ issuer }));
});
