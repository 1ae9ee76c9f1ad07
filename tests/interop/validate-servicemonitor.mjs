// Validates a ServiceMonitor (JSON on standard input) against the Prometheus Operator's
// CRD schema, as packaged by @kubernetes-models/prometheus-operator. Prints `valid`, or the
// schema errors and exits 1.
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

let input = '';
process.stdin.setEncoding('utf8');
for await (const chunk of process.stdin) input += chunk;
const { apiVersion, kind, ...rest } = JSON.parse(input);
if (apiVersion !== 'monitoring.coreos.com/v1' || kind !== 'ServiceMonitor') {
  console.log(`not a monitoring.coreos.com/v1 ServiceMonitor: ${apiVersion} ${kind}`);
  process.exit(1);
}
try {
  new ServiceMonitor(rest).validate();
  console.log('valid');
} catch (err) {
  console.log(err.message);
  process.exit(1);
}
