// A Node.js app using undici's EnvHttpProxyAgent, which reads HTTP_PROXY and NO_PROXY from
// the environment. GETs each URL given as an argument and prints one JSON line:
// [{"url", "status", "body"}, ...].
import { EnvHttpProxyAgent, request } from 'undici';

const dispatcher = new EnvHttpProxyAgent();
const results = [];
for (const url of process.argv.slice(2)) {
  const response = await request(url, { dispatcher, headersTimeout: 10_000, bodyTimeout: 10_000 });
  results.push({ url, status: response.statusCode, body: await response.body.text() });
}
process.stdout.write(`${JSON.stringify(results)}\n`);
await dispatcher.close();
