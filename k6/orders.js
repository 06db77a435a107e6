// k6 load test for POST /orders, parameterised like redpanda101's script.
//
//   k6 run k6/orders.js                         # 35 VUs, 2 minutes (the original profile)
//   BASE_URL=http://127.0.0.1:8080 RAMP_TARGET=35 STEADY_TARGET=35 \
//   RAMP_DURATION=10s STEADY_DURATION=2m SLEEP=0 k6 run k6/orders.js
//
// Every order gets a unique client_order_id, so a retried request can never
// create a duplicate; the checks look at the status and the response body.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';

import { AUTH, BASE_URL, SLEEP, stages, P95_MS } from './profile.js';

export const options = {
  stages,
  thresholds: {
    http_req_failed: ['rate==0'],
    http_req_duration: [`p(95)<${P95_MS}`],
    checks: ['rate==1'],
  },
};

const CURRENCIES = ['USD', 'GBP', 'JPY', 'CHF', 'AUD', 'CAD'];
const CHANNELS = [0, 1, 2, 3, 4, 11, 12, 13, 14, 21, 23, 31, 32, 33, 34, 41, 42, 51, 52, 53, 54, 61];
const RUN = `${Date.now().toString(36)}`;

export default function () {
  const n = exec.scenario.iterationInTest;
  const body = JSON.stringify({
    src_currency: CURRENCIES[n % CURRENCIES.length],
    dst_currency: 'EUR',
    side: n % 2 === 0 ? 'buy' : 'sell',
    price: `${100 + (n % 900)}.25`,
    quantity: `${1 + (n % 50)}`,
    channel: CHANNELS[n % CHANNELS.length],
    description: 'k6 load',
    client_order_id: `k6-${RUN}-${exec.vu.idInTest}-${n}`,
  });
  const res = http.post(`${BASE_URL}/orders`, body, {
    headers: { 'Content-Type': 'application/json', ...AUTH },
    tags: { name: 'POST /orders' },
  });
  check(res, {
    'status is 202': (r) => r.status === 202,
    'body has id, partition and offset': (r) => {
      const b = r.json();
      return typeof b.id === 'string' && Number.isInteger(b.partition) && Number.isInteger(b.offset);
    },
  });
  if (SLEEP > 0) sleep(SLEEP);
}
