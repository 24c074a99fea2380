// A real OpenID provider (npm `oidc-provider`) for Warden's tests.
//
// Workloads get JWT access tokens through the client credentials grant, the way a
// CI job or agent would. Each client's groups go into a `groups` claim. Prints one
// JSON line `{"issuer": ...}` once it listens; the port is free-chosen unless PORT is set.
import http from 'node:http';
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const CLIENTS = {
  'ci-deployer': { secret: 'ci-deployer-secret', groups: ['dba', 'ci'], ttl: 600 },
  'dev-alice': { secret: 'dev-alice-secret', groups: ['developers'], ttl: 600 },
  'short-lived': { secret: 'short-lived-secret', groups: ['dba'], ttl: 2 },
};

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
    clients: Object.entries(CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'api',
    })),
    scopes: ['openid', 'api'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:warden',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: CLIENTS[client.clientId]?.ttl ?? 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: ctx.oidc.params?.alg === 'ES256' ? 'ES256' : 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => ({ groups: CLIENTS[token.clientId]?.groups ?? [] }),
  });
  provider.on('server_error', (ctx, err) => console.error('oidc server_error', err));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});
