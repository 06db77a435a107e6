// The load profile both k6 scripts share, shaped by the environment like
// redpanda101's script: ramp-up target, steady target, their durations, and
// the per-iteration sleep.
const env = (name, fallback) => __ENV[name] || fallback;

export const BASE_URL = env('BASE_URL', 'http://127.0.0.1:8080');
export const SLEEP = parseFloat(env('SLEEP', '0'));
// oms' API key (`just key ACCOUNT`; `just up` prints a development key):
// every order request carries it.
export const KEY = env('OMS_KEY', '');
export const AUTH = KEY ? { Authorization: `Bearer ${KEY}` } : {};
export const stages = [
  { duration: env('RAMP_DURATION', '10s'), target: parseInt(env('RAMP_TARGET', '35'), 10) },
  { duration: env('STEADY_DURATION', '2m'), target: parseInt(env('STEADY_TARGET', '35'), 10) },
];
export const P95_MS = env('P95_MS', '5.68');
