// Exercises the generated TypeScript types (openapi-typescript) through
// openapi-fetch against a live oms: create an order, read it back, receive a
// typed validation error, cancel an order, read a symbol's trades and its
// book, and see a market order with nothing to take expire. `tsc` checks
// every access against the spec.
//
// Usage: node dist/check.js BASE_URL API_KEY   (`just test` generates, compiles and runs it)
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/oms.js";

type Problem = components["schemas"]["Problem"];

const [baseUrl, key] = process.argv.slice(2);
if (!baseUrl || !key) throw new Error("usage: node dist/check.js BASE_URL API_KEY");
const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });

// Without a key every order operation answers a typed 401 Problem.
const anonymous = createClient<paths>({ baseUrl });
const refused = await anonymous.GET("/orders/{id}", {
  params: { path: { id: "00000000-0000-7000-8000-000000000000" } },
});
if (refused.response.status !== 401 || !refused.error) {
  throw new Error(`without a key: expected 401, got ${refused.response.status}`);
}
const challenge = refused.response.headers.get("www-authenticate") ?? "";
if (!challenge.startsWith("Bearer")) throw new Error(`a 401 without a Bearer challenge: ${challenge}`);

const created = await client.POST("/orders", {
  body: {
    src_currency: "USD",
    dst_currency: "EUR",
    side: "buy",
    price: "1.0850",
    quantity: "2500",
    channel: 11,
    description: "from the generated TypeScript client",
    client_order_id: `ts-${Date.now()}-${Math.random()}`,
  },
});
if (created.response.status !== 202 || !created.data) {
  throw new Error(`expected 202, got ${created.response.status}`);
}
const id: string = created.data.id;

// Read-your-writes: the read right after the 202 finds the order (the server
// waits for its consumer instead of answering 404).
const got = await client.GET("/orders/{id}", { params: { path: { id } } });
if (!got.data) throw new Error(`order ${id} not readable right after its 202: ${got.response.status}`);
const price: string | undefined = got.data.price;
if (price !== "1.0850") throw new Error(`price came back as ${price}`);

// The types already rule out a wrong side or channel; patterns are the
// server's to check.
const bad = await client.POST("/orders", {
  body: { src_currency: "usd", dst_currency: "EUR", side: "sell", price: "-1", quantity: "1", channel: 11 },
});
const problem: Problem | undefined = bad.error;
if (bad.response.status !== 422 || !problem) throw new Error(`expected a typed 422, got ${bad.response.status}`);
const fields = (problem.errors ?? []).map((e) => e.field).sort();
if (fields.join(",") !== "price,src_currency") throw new Error(`422 named ${fields}`);

// Trading: a buy far below any sell rests, is cancelled, and its book empties.
const rest = await client.POST("/orders", {
  body: { src_currency: "TSA", dst_currency: "CLT", side: "buy", price: "0.0001", quantity: "3", channel: 11 },
});
if (!rest.data) throw new Error(`expected 202, got ${rest.response.status}`);
const restingId: string = rest.data.id;
const symbol: string = rest.data.symbol;
const opened = await client.GET("/orders/{id}", { params: { path: { id: restingId } } });
const status: components["schemas"]["Status"] | undefined = opened.data?.status;
if (status !== "open") throw new Error(`a resting order reads ${status}`);
const book = await client.GET("/orderbook/{symbol}", { params: { path: { symbol }, query: { depth: 5 } } });
if (book.data?.bids[0]?.price !== "0.0001") throw new Error(`book ${JSON.stringify(book.data)}`);
const cancel = await client.DELETE("/orders/{id}", { params: { path: { id: restingId } } });
if (cancel.response.status !== 202) throw new Error(`DELETE answered ${cancel.response.status}`);
let now = status as string;
for (let i = 0; i < 100 && now !== "cancelled"; i++) {
  const read = await client.GET("/orders/{id}", { params: { path: { id: restingId } } });
  now = read.data?.status ?? "missing";
  if (now !== "cancelled") await new Promise((r) => setTimeout(r, 50));
}
if (now !== "cancelled") throw new Error(`order ${restingId} is ${now} after its cancel`);
const again = await client.DELETE("/orders/{id}", { params: { path: { id: restingId } } });
const conflict: Problem | undefined = again.error;
if (again.response.status !== 409 || !conflict) throw new Error(`expected a typed 409, got ${again.response.status}`);
const trades = await client.GET("/trades", { params: { query: { symbol } } });
if (!trades.data || trades.data.trades.length !== 0) throw new Error(`trades ${JSON.stringify(trades.data)}`);

// A market order (no price) on a symbol with no book expires, and says why.
const market = await client.POST("/orders", {
  body: { type: "market", src_currency: "TSM", dst_currency: "CLT", side: "sell", quantity: "2", channel: 11 },
});
if (!market.data) throw new Error(`a market order: expected 202, got ${market.response.status}`);
let ended: components["schemas"]["Order"] | undefined;
for (let i = 0; i < 100 && ended?.status !== "expired"; i++) {
  ended = (await client.GET("/orders/{id}", { params: { path: { id: market.data.id } } })).data;
  if (ended?.status !== "expired") await new Promise((r) => setTimeout(r, 50));
}
const reason: components["schemas"]["Reason"] | undefined = ended?.reason;
if (ended?.status !== "expired" || reason !== "market_remainder" || ended.price !== undefined) {
  throw new Error(`a market order with nothing to take: ${JSON.stringify(ended)}`);
}

console.log(
  `typescript client: created ${id}, read it back, typed 422 naming ${fields.join(", ")}; ` +
    `cancelled ${restingId} (then a typed 409), read ${symbol}'s book and trades`,
);
