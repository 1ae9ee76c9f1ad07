// An independently written OAuth 2.0 / OpenID Connect server (panva/node-oidc-provider,
// an OpenID-certified implementation) for bearerd's interop tests.
//
// Listens on 127.0.0.1 on the port in $PORT (0: any free port) and prints one line of JSON,
// {"issuer": "http://127.0.0.1:PORT"}, once it accepts connections. Clients come from
// $INTEROP_CLIENTS (a JSON array of oidc-provider client metadata). With $INTEROP_KEY_DIR,
// it generates an RSA and a P-256 key pair with Node's crypto, writes the private keys there
// (rsa-pkcs1.pem, rsa-pkcs8.pem, ec-sec1.pem), and gives a client with "jwks_from": "rsa" or
// "ec" that public key (kid rsa-1 or ec-1) for private_key_jwt. Stops on SIGTERM, or when its
// standard input closes, so a test that dies cannot leave it behind.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
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

let provider;
const server = http.createServer((req, res) => provider.callback()(req, res));
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, {
    clients,
    scopes: [...scopes],
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      devInteractions: { enabled: false },
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
