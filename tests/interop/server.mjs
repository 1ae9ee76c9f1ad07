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
// Stops on SIGTERM, or when its standard input closes, so a test that dies cannot leave it
// behind.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import Provider from 'oidc-provider';

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
const scopes = new Set(['openid']);
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
const callback = (req, res) => provider.callback()(req, res);
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
    'client_secret_basic',
    'client_secret_post',
    'client_secret_jwt',
    'private_key_jwt',
    ...(tls ? ['tls_client_auth'] : []),
  ],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
    ...(tls ? { mTLS } : {}),
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
process.stdout.write(`${JSON.stringify(started)}\n`);

const stop = () => {
  for (const s of servers) s.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
