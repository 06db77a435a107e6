// The HTTP ceiling: the same profile as k6/orders.js against GET /healthz
// (no validation, no broker, no store), to see what the HTTP layer alone costs.
import http from 'k6/http';
import { check, sleep } from 'k6';

const env = (name, fallback) => __ENV[name] || fallback;
const BASE_URL = env('BASE_URL', 'http://127.0.0.1:8080');
const SLEEP = parseFloat(env('SLEEP', '0'));

export const options = {
  stages: [
    { duration: env('RAMP_DURATION', '10s'), target: parseInt(env('RAMP_TARGET', '35'), 10) },
    { duration: env('STEADY_DURATION', '2m'), target: parseInt(env('STEADY_TARGET', '35'), 10) },
  ],
  thresholds: { http_req_failed: ['rate==0'], checks: ['rate==1'] },
};

export default function () {
  const res = http.get(`${BASE_URL}/healthz`, { tags: { name: 'GET /healthz' } });
  check(res, { 'status is 200': (r) => r.status === 200 });
  if (SLEEP > 0) sleep(SLEEP);
}
