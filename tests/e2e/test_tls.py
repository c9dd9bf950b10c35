"""TLS between Envoy and picker, end to end: mutual TLS with a gateway client certificate."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack
from tests.e2e.h2client import H2Client
from tests.unit.transport.certs import CA


async def test_envoy_with_a_client_certificate_routes_and_others_are_refused(
    tmp_path: Path,
) -> None:
    ca = CA()
    server_crt, server_key = ca.write(tmp_path / "picker", "picker")
    gw_crt, gw_key = ca.write(tmp_path / "gateway", "gateway", client=True)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    tls = {
        "enabled": True,
        "cert_file": str(server_crt),
        "key_file": str(server_key),
        "client_ca_file": str(tmp_path / "ca.crt"),
    }
    envoy = {"picker_ca": str(tmp_path / "ca.crt"), "client_cert": (str(gw_crt), str(gw_key))}
    with Stack(pods=2, time_scale=10.0, picker_config={"tls": tls}, envoy_options=envoy) as st:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "over mutual TLS", "max_tokens": 2}
            outs = [await send(s, st.url + "/v1/completions", body) for _ in range(6)]
        assert all(o.ok for o in outs), [o.error for o in outs]
        assert {o.pod for o in outs} <= set(st.pod_addresses)
        # Anyone else reaching the port gets no HTTP/2 at all: plaintext is not TLS ...
        c = H2Client(st.picker_grpc_port)
        assert c.wait_closed() and not c.frames
        c.close()
