"""Schemathesis hooks for oms (loaded through SCHEMATHESIS_HOOKS by scripts/e2e.sh).

The OpenAPI document states every order rule a JSON Schema can express. One it
cannot: an order exchanges two *different* currencies (`dst_currency` must differ
from `src_currency`), and the server answers 422 `distinct` otherwise. Without
being told, the fuzzer counts a generated USD→USD order as a schema-valid request
rejected. So before each call, a body whose two currencies are equal gets a
different `dst_currency` — still a valid currency code, so a positive case stays
positive and a negative case keeps the violation it was generated for.
"""

import schemathesis


def _other_currency(code: str) -> str:
    last = "A" if code[-1] != "A" else "B"
    return code[:-1] + last


@schemathesis.hook("before_call").apply_to(method="POST", path="/orders")
def distinct_currencies(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    src, dst = body.get("src_currency"), body.get("dst_currency")
    if isinstance(src, str) and src == dst and src:
        body["dst_currency"] = _other_currency(dst)
        if "json" in kwargs:
            kwargs["json"] = body
