// An independently written OAuth 2.0 / OpenID Connect server (panva/node-oidc-provider,
// an OpenID-certified implementation) for bearerd's interop tests.
//
// Listens on 127.0.0.1 on the port in $PORT (0: any free port) and prints one line of JSON,
// {"issuer": "http://127.0.0.1:PORT"}, once it accepts connections. Clients come from
// $INTEROP_CLIENTS (a JSON array of oidc-provider client metadata). With $INTEROP_KEY_DIR,
// it generates an RSA and a P-256 key pair with Node's crypto, writes the private keys there
// (rsa-pkcs1.pem, rsa-pkcs8.pem, ec-sec1.pem), and gives a client with "jwks_from": "rsa" or
// "ec" that public key (kid rsa-1 or ec-1) for private_key_jwt. A client registered with
// client_secret_jwt authenticates with an HS256 assertion keyed with its client_secret.
//
// With $INTEROP_TLS_CERT, $INTEROP_TLS_KEY and $INTEROP_TLS_CA (PEM text), it also serves
// HTTPS on another loopback port, asking every client for a certificate, and enables
// RFC 8705 tls_client_auth: a client registered with tls_client_auth_subject_dn must present
// a certificate signed by that CA with exactly that subject. The discovery document then
// names the HTTPS token endpoint in mtls_endpoint_aliases, and the line printed at start-up
// gains "mtls": "https://localhost:PORT".
//
// Clients with the authorization_code grant are consented without anyone: the interaction
// pages (/interaction/<uid>) sign in account "operator" and grant every scope asked for at
// once, so a test follows the redirects from the authorization endpoint back to its
// redirect_uri with nothing but a cookie jar. Refresh tokens rotate at every use (reusing a
// spent one is invalid_grant and revokes the grant). $INTEROP_ACCESS_TOKEN_TTL sets the access
// token lifetime in seconds. GET /test/refreshes?client_id=X answers what the token endpoint
// did with that client's refresh tokens: {"refreshed": n, "rotated": n, "refused": n}.
//
// Stops on SIGTERM, or when its standard input closes, so a test that dies cannot leave it
// behind.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import Provider from 'oidc-provider';

// Standard output carries the one start-up line the test reads, and then closes on its side:
// the provider's notices (console.info) go to standard error instead.
console.info = (...args) => console.error(...args);

const clients = JSON.parse(process.env.INTEROP_CLIENTS ?? '[]');
const keyDir = process.env.INTEROP_KEY_DIR;
if (keyDir) {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(`${keyDir}/rsa-pkcs1.pem`, rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }));
  writeFileSync(`${keyDir}/rsa-pkcs8.pem`, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(`${keyDir}/ec-sec1.pem`, ec.privateKey.export({ type: 'sec1', format: 'pem' }));
  const jwks = {
    rsa: { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa-1' },
    ec: { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1' },
  };
  for (const client of clients) {
    if (client.jwks_from) {
      client.jwks = { keys: [jwks[client.jwks_from]] };
      delete client.jwks_from;
    }
  }
}
const scopes = new Set(['openid', 'offline_access']);
for (const client of clients) {
  for (const scope of (client.scope ?? '').split(' ').filter(Boolean)) scopes.add(scope);
}

const tls = process.env.INTEROP_TLS_CERT
  ? { cert: process.env.INTEROP_TLS_CERT, key: process.env.INTEROP_TLS_KEY, ca: process.env.INTEROP_TLS_CA }
  : null;

// RFC 8705 §2.1 checks, on the TLS socket the request came in on.
const peer = (ctx) => ctx.socket.getPeerX509Certificate?.();
const mTLS = {
  enabled: true,
  tlsClientAuth: true,
  getCertificate: (ctx) => peer(ctx)?.toString(),
  certificateAuthorized: (ctx) => ctx.socket.authorized === true,
  certificateSubjectMatches: (ctx, property, expected) =>
    property === 'tls_client_auth_subject_dn' && peer(ctx)?.subject === expected,
};

let provider;

// Signs in and consents whatever the interaction asks, one prompt at a time.
async function interaction(req, res) {
  try {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: 'operator' } };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scope] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      result = { error: 'access_denied', error_description: `no automatic answer to ${prompt.name}` };
    }
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  } catch (err) {
    console.error('interaction', err);
    res.statusCode = 500;
    res.end(String(err));
  }
}

// What the token endpoint did with each client's refresh tokens.
const refreshes = {};
const counted = (clientId) => {
  refreshes[clientId] ??= { refreshed: 0, rotated: 0, refused: 0 };
  return refreshes[clientId];
};

const callback = (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/interaction/')) return interaction(req, res);
  if (url.pathname === '/test/refreshes') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify(counted(url.searchParams.get('client_id'))));
  }
  return provider.callback()(req, res);
};
const listen = (server, port) =>
  new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server.address().port)));

const server = http.createServer(callback);
const servers = [server];
const issuer = `http://127.0.0.1:${await listen(server, Number(process.env.PORT ?? 0))}`;
const started = { issuer };
const discovery = {};
if (tls) {
  // rejectUnauthorized: false lets the provider itself judge the certificate (and say why).
  const secure = https.createServer({ ...tls, requestCert: true, rejectUnauthorized: false }, callback);
  servers.push(secure);
  started.mtls = `https://localhost:${await listen(secure, 0)}`;
  discovery.mtls_endpoint_aliases = { token_endpoint: `${started.mtls}/token` };
}
provider = new Provider(issuer, {
  clients,
  scopes: [...scopes],
  discovery,
  clientAuthMethods: [
    'none',
    'client_secret_basic',
    'client_secret_post',
    'client_secret_jwt',
    'private_key_jwt',
    ...(tls ? ['tls_client_auth'] : []),
  ],
  rotateRefreshToken: true,
  ...(process.env.INTEROP_ACCESS_TOKEN_TTL
    ? { ttl: { AccessToken: Number(process.env.INTEROP_ACCESS_TOKEN_TTL) } }
    : {}),
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
    ...(tls ? { mTLS } : {}),
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type !== 'refresh_token') return;
  const count = counted(ctx.oidc.client.clientId);
  count.refreshed += 1;
  if (ctx.oidc.entities.RotatedRefreshToken) count.rotated += 1;
});
provider.on('grant.error', (ctx, err) => {
  if (ctx.oidc.params?.grant_type === 'refresh_token' && err.error === 'invalid_grant' && ctx.oidc.client) {
    counted(ctx.oidc.client.clientId).refused += 1;
  }
});
process.stdout.write(`${JSON.stringify(started)}\n`);

const stop = () => {
  for (const s of servers) s.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
