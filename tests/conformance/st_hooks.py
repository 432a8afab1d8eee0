"""A schemathesis check for the fuzz run (SCHEMATHESIS_HOOKS=st_hooks): the only 5xx the
contract specifies is 503 `processor_unavailable` (and `service_unavailable` when the
database is down, which it is not during the run)."""

import schemathesis


@schemathesis.check
def only_specified_5xx(ctx, response, case):
    if response.status_code >= 500:
        code = None
        try:
            code = response.json().get("code")
        except Exception:
            pass
        if response.status_code != 503 or code != "processor_unavailable":
            raise AssertionError(f"unspecified server error {response.status_code} (code {code!r})")
