// The HTTP ceiling: the same profile as k6/orders.js against GET /healthz
// (no validation, no broker, no store), to see what the HTTP layer alone costs.
import http from 'k6/http';
import { check, sleep } from 'k6';

import { BASE_URL, SLEEP, stages } from './profile.js';

export const options = {
  stages,
  thresholds: { http_req_failed: ['rate==0'], checks: ['rate==1'] },
};

export default function () {
  const res = http.get(`${BASE_URL}/healthz`, { tags: { name: 'GET /healthz' } });
  check(res, { 'status is 200': (r) => r.status === 200 });
  if (SLEEP > 0) sleep(SLEEP);
}
