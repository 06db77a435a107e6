// Exercises the generated TypeScript types (openapi-typescript) through
// openapi-fetch against a live oms: create an order, read it back, receive a
// typed validation error. `tsc` checks every access against the spec.
//
// Usage: node dist/check.js BASE_URL   (`just test` generates, compiles and runs it)
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/oms.js";

type Problem = components["schemas"]["Problem"];

const baseUrl = process.argv[2];
if (!baseUrl) throw new Error("usage: node dist/check.js BASE_URL");
const client = createClient<paths>({ baseUrl });

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
const price: string = got.data.price;
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

console.log(`typescript client: created ${id}, read it back, typed 422 naming ${fields.join(", ")}`);
