"""`aliyun-acs3` against Alibaba Cloud's official Python SDK.

Each case is a random request (fixed seed) signed twice at a fixed time: by
the SDK's ACS3 signer, `alibabacloud_openapi_util.client.Client.get_authorization`
(the function `alibabacloud_tea_openapi` calls for every V3 request), and by
`latchkey sign --scheme aliyun-acs3`. The `authorization` header, and the
`x-acs-*` headers it covers, must be equal byte for byte.

The SDK is fed what it would itself send: the path encoded segment by segment
(`get_encode_param`), query names from the characters RFC 3986 leaves alone
(the SDK does not encode names), query values as `urlencode` puts them on the
wire, and the signed headers (`host`, `content-type`, `x-acs-*`). Repeated
headers are given to the SDK as differently-cased dictionary keys, as the SDK's
own tests do. Repeated query names cannot be expressed to the SDK (it takes a
dict; Alibaba APIs flatten lists to `Name.1`, `Name.2`) and are covered by the
plugin's unit tests instead.

Run: pip install -r tests/sdk/requirements-aliyun-acs3.txt; cargo build -p latchkey;
pytest tests/sdk/test_aliyun_acs3.py (LATCHKEY_BIN overrides the binary).
"""

import hashlib
import json
import os
import random
import string
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

openapi_util = pytest.importorskip("alibabacloud_openapi_util.client")
tea_request = pytest.importorskip("Tea.request")

REPO = Path(__file__).resolve().parents[2]
LATCHKEY = Path(os.environ.get("LATCHKEY_BIN", REPO / "target" / "debug" / "latchkey"))
SEED = 20231026
CASES = 240
ALGORITHM = "ACS3-HMAC-SHA256"

HOSTS = [
    "ecs.cn-shanghai.aliyuncs.com",
    "cs.cn-beijing.aliyuncs.com",
    "sts.aliyuncs.com",
    "example.aliyuncs.com:8443",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
SEGMENTS = [
    "", "clusters", "api", "v1", "a b", "a+b", "a/b", ".", "..", "中文", "ü", "~tilde",
    "*star*", "100%", "(p)", "a=b&c", "x;y", "é+é", "%2F", "  ",
]
NAME_CHARS = string.ascii_letters + string.digits + "-._~"
VALUES = [
    "", "1", "cn-hangzhou", "a b", "a+b", "a/b", "x&y=z", "中文", "ü~*", "100%",
    "  two  spaces  ", "'quoted'", "[1,2]", "{\"k\": \"v\"}", "tab\there", "~.-_",
]
CONTENT_TYPES = [
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "application/json;  charset=utf-8",
]
HEADER_VALUES = ["a", "a  b", "  padded  ", "x\t y", "RunInstances", "v1,v2", "", "中"]


def rand_text(rng, alphabet, low, high):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def make_case(rng, index):
    """One random request, and what the SDK is given for it."""
    host = rng.choice(HOSTS)
    method = rng.choice(METHODS)
    segments = [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 4))]
    path = "/" + "/".join(quote(s, safe="~") for s in segments)

    names = set()
    query = {}
    wire = []
    for _ in range(rng.randint(0, 5)):
        name = rand_text(rng, NAME_CHARS, 1, 8)
        if name in names:
            continue
        names.add(name)
        value = rng.choice(VALUES)
        query[name] = value
        style = rng.randrange(3)
        if style == 0 and value == "":
            wire.append(name)  # valueless: `name` alone
        elif style == 1:
            wire.append(f"{name}={quote(value, safe='~')}")
        else:
            wire.append(f"{name}={quote_plus(value, safe='~')}")  # as urlencode sends it
    url = f"https://{host}{path}" + ("?" + "&".join(wire) if wire or rng.random() < 0.1 else "")

    at = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(0, 10**8))
    nonce = rand_text(rng, string.hexdigits.lower()[:16], 32, 32)
    token = rand_text(rng, string.ascii_letters + string.digits + "+/=", 40, 80) if rng.random() < 0.3 else None
    secrets = {
        "access_key_id": "LTAI" + rand_text(rng, string.ascii_letters + string.digits, 16, 20),
        "access_key_secret": rand_text(rng, string.ascii_letters + string.digits, 30, 30),
    }
    if token:
        secrets["security_token"] = token

    body_kind = rng.randrange(3)
    body = b"" if body_kind == 0 else (
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) if body_kind == 1
        else json.dumps({"k": rng.choice(VALUES)}).encode())

    # Headers as the caller sends them (`wire_headers`), and the signed ones
    # as the SDK sees them (`sdk_headers`, names as given, values stripped).
    wire_headers = [
        ("x-acs-action", rand_text(rng, string.ascii_letters, 4, 12)),
        ("x-acs-version", "2014-05-26"),
        ("x-acs-signature-nonce", nonce),
    ]
    if rng.random() < 0.6:
        wire_headers.append(("Content-Type", rng.choice(CONTENT_TYPES)))
    for _ in range(rng.randint(0, 3)):
        name = "x-acs-extra-" + rand_text(rng, string.ascii_lowercase, 3, 6)
        if any(n.lower() == name for n, _ in wire_headers):
            continue
        wire_headers.append((name, rng.choice(HEADER_VALUES)))
        if rng.random() < 0.4:  # the same header again, differently cased
            wire_headers.append((name.title(), rng.choice(HEADER_VALUES)))
    if rng.random() < 0.5:
        wire_headers.append(("User-Agent", "test/1.0  (unsigned)"))
    if rng.random() < 0.2:
        wire_headers.append(("x-acs-date", "2001-01-01T00:00:00Z"))  # replaced by the scheme
    rng.shuffle(wire_headers)

    sdk_headers = {}
    for name, value in wire_headers:
        lower = name.lower()
        if lower == "x-acs-date" or not (lower.startswith("x-acs-") or lower == "content-type"):
            continue
        sdk_headers[name] = value.strip(" \t")
    sdk_headers["host"] = host
    sdk_headers["x-acs-date"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    sdk_headers["x-acs-content-sha256"] = hashlib.sha256(body).hexdigest()
    if token:
        sdk_headers["x-acs-accesskey-id"] = secrets["access_key_id"]
        sdk_headers["x-acs-security-token"] = token

    return {
        "id": f"{index:03d}-{method}",
        "method": method,
        "url": url,
        "path": path,
        "query": query,
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "secrets": secrets,
        "body": body,
        "wire_headers": wire_headers,
        "sdk_headers": sdk_headers,
    }


def sdk_authorization(case):
    request = tea_request.TeaRequest()
    request.method = case["method"]
    request.pathname = case["path"]
    request.query = dict(case["query"])
    request.headers = dict(case["sdk_headers"])
    return openapi_util.Client.get_authorization(
        request,
        ALGORITHM,
        hashlib.sha256(case["body"]).hexdigest(),
        case["secrets"]["access_key_id"],
        case["secrets"]["access_key_secret"],
    )


def latchkey_sign(case, tmp_path):
    if not LATCHKEY.exists():
        pytest.skip(f"latchkey binary not found at {LATCHKEY}; run `cargo build -p latchkey` or set LATCHKEY_BIN")
    args = [str(LATCHKEY), "sign", "--scheme", "aliyun-acs3", "--at", case["at"],
            "--method", case["method"], "--url", case["url"]]
    for field, value in case["secrets"].items():
        args += ["--secret", f"{field}={value}"]
    for name, value in case["wire_headers"]:
        args += ["-H", f"{name}: {value}"]
    if case["body"]:
        body_file = tmp_path / "body.bin"
        body_file.write_bytes(case["body"])
        args += ["--body-file", str(body_file)]
    done = subprocess.run(args, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def header(signed, name):
    values = [v for n, v in signed["headers"] if n.lower() == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


_rng = random.Random(SEED)
_CASES = [make_case(_rng, i) for i in range(CASES)]


@pytest.mark.parametrize("case", _CASES, ids=[c["id"] for c in _CASES])
def test_matches_official_sdk(case, tmp_path):
    signed = latchkey_sign(case, tmp_path)
    assert header(signed, "authorization") == sdk_authorization(case)
    for name in ("x-acs-date", "x-acs-content-sha256", "x-acs-signature-nonce"):
        assert header(signed, name) == case["sdk_headers"][name]
    if "security_token" in case["secrets"]:
        assert header(signed, "x-acs-security-token") == case["secrets"]["security_token"]
        assert header(signed, "x-acs-accesskey-id") == case["secrets"]["access_key_id"]
    assert signed["url"] == case["url"]


def test_sdk_reproduces_the_documented_example():
    """The comparison is only as good as the SDK call: pin it to the
    documentation's worked example first."""
    request = tea_request.TeaRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = {
        "ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
        "RegionId": "cn-shanghai",
    }
    request.headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
    }
    auth = openapi_util.Client.get_authorization(
        request, ALGORITHM, hashlib.sha256(b"").hexdigest(), "YourAccessKeyId", "YourAccessKeySecret")
    assert auth.endswith("Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0")
