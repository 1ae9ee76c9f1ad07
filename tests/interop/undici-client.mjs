// A Node.js app using undici's EnvHttpProxyAgent, which reads HTTP_PROXY and NO_PROXY from
// the environment. GETs each URL given as an argument and prints one JSON line:
// [{"url", "status", "body"}, ...].
//
// proxyTunnel: false matters: by default undici tunnels even http:// requests through the
// proxy with CONNECT, and inside a tunnel bearerd can add nothing. With it, http:// requests
// go to the proxy in absolute form, as HTTP_PROXY clients normally send them.
import { EnvHttpProxyAgent, request } from 'undici';

const dispatcher = new EnvHttpProxyAgent({ proxyTunnel: false });
const results = [];
for (const url of process.argv.slice(2)) {
  const response = await request(url, { dispatcher, headersTimeout: 10_000, bodyTimeout: 10_000 });
  results.push({ url, status: response.statusCode, body: await response.body.text() });
}
process.stdout.write(`${JSON.stringify(results)}\n`);
await dispatcher.close();
