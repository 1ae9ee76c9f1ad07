// An independently written OAuth 2.0 / OpenID Connect server (panva/node-oidc-provider,
// an OpenID-certified implementation) for bearerd's interop tests.
//
// Listens on 127.0.0.1 on the port in $PORT (0: any free port) and prints one line of JSON,
// {"issuer": "http://127.0.0.1:PORT"}, once it accepts connections. Clients come from
// $INTEROP_CLIENTS (a JSON array of oidc-provider client metadata). Stops on SIGTERM,
// or when its standard input closes, so a test that dies cannot leave it behind.
import http from 'node:http';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.INTEROP_CLIENTS ?? '[]');
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
