// A Node.js app using undici's EnvHttpProxyAgent with its default options, as an app behind
// HTTPS_PROXY does: an https:// URL goes through the proxy with CONNECT, and the TLS inside
// trusts Node's roots plus NODE_EXTRA_CA_CERTS. GETs each URL given as an argument and
// prints one JSON line: [{"url", "status", "body"}, ...].
import { EnvHttpProxyAgent, request } from 'undici';

const dispatcher = new EnvHttpProxyAgent();
const results = [];
for (const url of process.argv.slice(2)) {
  const response = await request(url, { dispatcher, headersTimeout: 10_000, bodyTimeout: 10_000 });
  results.push({ url, status: response.statusCode, body: await response.body.text() });
}
process.stdout.write(`${JSON.stringify(results)}\n`);
await dispatcher.close();
