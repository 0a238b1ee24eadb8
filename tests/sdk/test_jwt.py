"""`jwt` against PyJWT, an independent JOSE implementation (THREATS 44).

Keys are generated here (RSA 2048 in PKCS#8 and PKCS#1, P-256, Ed25519, a
random HMAC secret) and used only by this test. From a fixed seed, random
credentials (issuer, subject, audiences, lifetimes, key ids, extra claims with
UTF-8, escapes and nested values, header names and prefixes) and random
requests (methods, odd paths and queries, repeated headers, empty and binary
bodies) are signed with `latchkey sign --scheme jwt`. Each token must:

- verify under PyJWT with the right key and the algorithm pinned, with `iss`,
  `aud`, `exp`, `iat`, `nbf` and `jti` present and as configured;
- have exactly the JOSE header and claims JSON the scheme documents (header
  `alg`, `typ`, `kid`; registered claims, then extra claims sorted by name);
- for the deterministic algorithms (HS256, RS256, EdDSA) with a fixed `jti`,
  equal byte for byte the token PyJWT's own signer (`PyJWS.encode`) makes from
  the same header and claims;
- for ES256, carry a 64-byte `r || s` signature (not DER);
- leave the request as it was apart from the token header.

Random `jti` values must be 16 random bytes and unique across calls, and
`alg=none` must be impossible to mint. The golden tokens of
`tests/vectors/jwt.json` are re-verified here too, so the vector file is
checked by a second implementation every run.

Run: pip install -r tests/sdk/requirements-jwt.txt; cargo build -p latchkey;
pytest tests/sdk/test_jwt.py (LATCHKEY_BIN overrides the binary).
"""

import base64
import urllib.parse
import json
import os
import random
import secrets
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.api_jws import PyJWS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LATCHKEY = Path(os.environ.get("LATCHKEY_BIN", REPO / "target" / "debug" / "latchkey"))
VECTORS = REPO / "tests" / "vectors" / "jwt.json"
SEED = 20240501
CASES = 240
ALGS = ["HS256", "RS256", "ES256", "EdDSA"]
REGISTERED = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
SEGMENTS = ["", "v1", "a b", "a+b", "a%2Fb", ".", "..", "%E4%B8%AD", "ü", "~x", "x-y_z.w", "%20"]
QUERIES = ["", "a=1", "a=1&a=2", "a=&b", "x=%2F&y=a+b", "empty=&=v&flag", "u=%C3%BC&u=ü"]
HEADER_NAMES = ["Accept", "X-Trace", "x-trace", "Content-Type", "X-Empty", "Authorization", "x-jwt"]
HEADER_VALUES = ["*/*", "a   b", "1", "", "application/json;  charset=utf-8", "Bearer stale", "ü"]
TEXTS = ["latchkey", "agent-7", "https://issuer.example", "urn:x:y", "Zoë 🚀", 'quote"back\\slash', "tab\there",
         "line\nbreak", "中文", "\u0001ctl", "x" * 200, "/slash/", "<>&'"]
# What a config value may hold: the vault (and so offline signing, which
# applies the same hygiene) refuses control characters other than tab and
# line breaks; those stay in TEXTS for claim values, which JSON escapes.
CONFIG_TEXTS = [t for t in TEXTS if not any(ord(c) < 0x20 and c not in "\t\n" for c in t)]
AUDIENCES = ["https://api.example", "api", "urn:aud:1", "ü-aud", "svc.internal"]


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def compact(obj) -> str:
    """JSON as the scheme writes it: no spaces, UTF-8 unescaped, members in
    the order given (see `sort_nested` for the order of extra claims)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def pem(key, fmt=serialization.PrivateFormat.PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """alg -> list of (secret argument for --secret, verification key, signing key for PyJWS)."""
    d = tmp_path_factory.mktemp("jwt-keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    hmac_secret = secrets.token_urlsafe(48)
    files = {
        "rsa-pkcs8.pem": pem(rsa_key),
        "rsa-pkcs1.pem": pem(rsa_key, fmt=serialization.PrivateFormat.TraditionalOpenSSL),
        "p256.pem": pem(p256),
        "ed25519.pem": pem(ed),
        "hmac.txt": hmac_secret,
    }
    for name, text in files.items():
        (d / name).write_text(text)
    at = lambda name: f"key=@{d / name}"  # noqa: E731
    return {
        # The HMAC secret goes both inline and from a file.
        "HS256": [(f"key={hmac_secret}", hmac_secret, hmac_secret), (at("hmac.txt"), hmac_secret, hmac_secret)],
        "RS256": [(at("rsa-pkcs8.pem"), rsa_key.public_key(), rsa_key), (at("rsa-pkcs1.pem"), rsa_key.public_key(), rsa_key)],
        "ES256": [(at("p256.pem"), p256.public_key(), p256)],
        "EdDSA": [(at("ed25519.pem"), ed.public_key(), ed)],
    }


def latchkey(config, secret_arg, *, at=None, method="GET", url="https://api.example/", headers=(), body_file=None):
    args = [str(LATCHKEY), "sign", "--scheme", "jwt", "-X", method, "--url", url, "--secret", secret_arg]
    for k, v in config.items():
        args += ["--config", f"{k}={v}"]
    if at is not None:
        args += ["--at", at]
    for n, v in headers:
        args += ["-H", f"{n}: {v}"]
    if body_file is not None:
        args += ["--body-file", str(body_file)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def sign(config, secret_arg, **kw):
    p = latchkey(config, secret_arg, **kw)
    assert p.returncode == 0, f"latchkey failed: {p.stderr}"
    return json.loads(p.stdout)


# -- the scheme's documented token, modelled here from the config -------------


def audiences(config):
    if "aud" not in config:
        return None
    return [a.strip() for a in config["aud"].split(",")]


def expected_header(config):
    h = {"alg": config["alg"], "typ": "JWT"}
    if "kid" in config:
        h["kid"] = config["kid"]
    return h


def expected_claims(config, iat, jti):
    c = {}
    for name in ["iss", "sub"]:
        if name in config:
            c[name] = config[name]
    aud = audiences(config)
    if aud is not None:
        c["aud"] = aud[0] if len(aud) == 1 else aud
    c.update(iat=iat, nbf=iat, exp=iat + int(config.get("ttl_seconds", 300)), jti=jti)
    extra = json.loads(config.get("claims", "{}"))
    for name in sorted(extra):
        c[name] = sort_nested(extra[name])
    return c


def sort_nested(v):
    """Extra claims are written sorted by name at every depth (the scheme
    keeps them in a sorted map), so the output never depends on input order."""
    if isinstance(v, dict):
        return {k: sort_nested(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [sort_nested(x) for x in v]
    return v


def expected_headers(request_headers, name, value):
    """`set-header`: the first same-named header replaced in place (keeping its
    spelling), the others removed; appended when there is none."""
    out, done = [], False
    for n, v in request_headers:
        if n.lower() == name.lower():
            if not done:
                out.append([n, value])
                done = True
        else:
            out.append([n, v])
    if not done:
        out.append([name, value])
    return out


class JoseOrder(json.JSONEncoder):
    """Makes PyJWS write the header in the scheme's member order (`alg`,
    `typ`, `kid`) instead of its own, so byte comparison is possible."""

    def encode(self, o):
        return compact({k: o[k] for k in ["alg", "typ", "kid"] if k in o})


def pyjwt_token(alg, signing_key, header, claims_json: str) -> str:
    extra = {"kid": header["kid"]} if "kid" in header else None
    return PyJWS().encode(claims_json.encode(), signing_key, algorithm=alg, headers=extra,
                          json_encoder=JoseOrder, sort_headers=False)


def verify(token, alg, vkey, config, *, check_time=False):
    """PyJWT's verdict with the algorithm pinned; returns the claims."""
    aud = audiences(config)
    return jwt.decode(
        token,
        vkey,
        algorithms=[alg],
        audience=aud,
        issuer=config.get("iss"),
        options={
            "require": ["exp", "iat", "nbf", "jti"] + (["iss"] if "iss" in config else []),
            "verify_aud": aud is not None,
            "verify_exp": check_time,
            "verify_nbf": check_time,
            "verify_iat": check_time,
        },
    )


# -- random inputs ------------------------------------------------------------


def random_json(rng, depth=0):
    kinds = ["str", "int", "bool", "null", "float"] + (["list", "obj"] if depth < 2 else [])
    k = rng.choice(kinds)
    if k == "str":
        return rng.choice(TEXTS)
    if k == "int":
        return rng.choice([0, -1, 42, 2**53, 2**63 - 1, -(2**63), 2**64 - 1])
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "float":
        return rng.choice([0.5, -3.75, 2.25, 1234.5])
    if k == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["z", "a", "ü", "m", "Z", "_"]) + str(i): random_json(rng, depth + 1) for i in range(rng.randint(0, 3))}


def random_config(rng, alg):
    c = {"alg": alg}
    if rng.random() < 0.7:
        c["iss"] = rng.choice(CONFIG_TEXTS)
    if rng.random() < 0.5:
        c["sub"] = rng.choice(CONFIG_TEXTS)
    if rng.random() < 0.7:
        auds = rng.sample(AUDIENCES, rng.randint(1, 3))
        c["aud"] = rng.choice([",", ", ", " ,  "]).join(auds)
    if rng.random() < 0.5:
        c["ttl_seconds"] = str(rng.choice([1, 5, 60, 299, 300, 3600, 86400, rng.randint(1, 86400)]))
    if rng.random() < 0.5:
        c["kid"] = rng.choice(["k1", "2024-05", "ü-kid", 'k"q', "../../dev/null"])
    if rng.random() < 0.5:
        names = rng.sample(["scope", "roles", "tenant", "email_verified", "ü", "zz", "A", "nested", "n"], rng.randint(1, 4))
        c["claims"] = compact({n: random_json(rng) for n in names})
    if rng.random() < 0.4:
        c["header"] = rng.choice(["X-Jwt", "x-service-token", "AUTHORIZATION", "Authorization"])
    if rng.random() < 0.4:
        c["prefix"] = rng.choice(["", "JWT ", "Bearer "])
    if rng.random() < 0.5:
        c["jti"] = f"fixed-{rng.randint(0, 10**6)}"
    return c


def random_request(rng, tmp_path, i):
    path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, 4)))
    path = rng.choice([path, "//" + path.lstrip("/"), "/./" + path.lstrip("/")])
    query = rng.choice(QUERIES)
    # URLs go to latchkey in wire form: raw spaces and non-ASCII are refused.
    wire = "/%:@!$&'()*+,;=~?"
    path, query = urllib.parse.quote(path, safe=wire), urllib.parse.quote(query, safe=wire)
    url = f"https://api.example{path}" + (f"?{query}" if query else "")
    headers = [(rng.choice(HEADER_NAMES), rng.choice(HEADER_VALUES)) for _ in range(rng.randint(0, 4))]
    body = rng.choice([b"", b'{"a":1}', bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))])
    body_file = tmp_path / f"body-{i}"
    body_file.write_bytes(body)
    return rng.choice(METHODS), url, headers, body_file


def random_time(rng):
    secs = rng.randint(946684800, 4102444800)  # 2000 to 2100.
    frac = rng.choice(["", ".5", ".000001", ".999999999"])
    stamp = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}{frac}Z", secs


# -- tests ----------------------------------------------------------------------


def test_a_control_character_in_config_is_refused_as_the_vault_refuses_it(keys):
    secret_arg = keys["HS256"][0][0]
    p = latchkey({"alg": "HS256", "iss": "\u0001ctl"}, secret_arg, method="GET", url="https://api.example/")
    assert p.returncode == 1 and "error[invalid_config]" in p.stderr, p.stderr


def test_random_tokens_are_accepted_by_pyjwt(keys, tmp_path):
    rng = random.Random(SEED)
    jtis = []
    byte_equal = 0
    for i in range(CASES):
        alg = ALGS[i % len(ALGS)]
        secret_arg, vkey, skey = rng.choice(keys[alg])
        config = random_config(rng, alg)
        method, url, headers, body_file = random_request(rng, tmp_path, i)
        at, iat = random_time(rng)
        out = sign(config, secret_arg, at=at, method=method, url=url, headers=headers, body_file=body_file)
        ctx = f"case {i}: {config} {at}"

        name, prefix = config.get("header", "Authorization"), config.get("prefix", "Bearer ")
        value = next(v for n, v in out["headers"] if n.lower() == name.lower())
        assert value.startswith(prefix), ctx
        token = value[len(prefix):]
        # The request is unchanged apart from the token header.
        assert (out["method"], out["url"]) == (method, url), ctx
        assert out["headers"] == expected_headers([[n, v.strip(" \t")] for n, v in headers], name, value), ctx

        h64, c64, s64 = token.split(".")
        claims_text = b64u_decode(c64).decode()
        jti = json.loads(claims_text)["jti"]
        if "jti" in config:
            assert jti == config["jti"], ctx
        else:
            assert len(b64u_decode(jti)) == 16 and "=" not in jti, ctx
            jtis.append(jti)
        header = expected_header(config)
        claims = expected_claims(config, iat, jti)
        assert b64u_decode(h64).decode() == compact(header), ctx
        assert claims_text == compact(claims), ctx

        assert verify(token, alg, vkey, config) == claims, ctx
        assert jwt.get_unverified_header(token) == header, ctx
        if alg == "ES256":
            assert len(b64u_decode(s64)) == 64, f"{ctx}: ES256 signature is not r || s"
        elif "jti" in config:
            assert token == pyjwt_token(alg, skey, header, claims_text), ctx
            byte_equal += 1
    assert len(set(jtis)) == len(jtis) > 50
    assert byte_equal > 50


def test_current_time_tokens_pass_full_validation(keys):
    """No `--at`: the host's clock; PyJWT checks exp, nbf and iat for real."""
    for alg in ALGS:
        for secret_arg, vkey, _ in keys[alg]:
            config = {"alg": alg, "iss": "latchkey", "aud": "https://api.example", "ttl_seconds": "120"}
            before = int(time.time())
            out = sign(config, secret_arg)
            after = int(time.time())
            token = dict(out["headers"])["Authorization"].removeprefix("Bearer ")
            claims = verify(token, alg, vkey, config, check_time=True)
            assert before <= claims["iat"] <= after
            assert claims["nbf"] == claims["iat"] and claims["exp"] == claims["iat"] + 120
            assert claims["iss"] == "latchkey" and claims["aud"] == "https://api.example"


def test_jti_unique_across_calls(keys):
    seen = set()
    at = "2024-05-01T12:00:00Z"
    for alg in ALGS:
        secret_arg = keys[alg][0][0]
        for _ in range(25):
            out = sign({"alg": alg}, secret_arg, at=at)
            token = dict(out["headers"])["Authorization"].removeprefix("Bearer ")
            jti = json.loads(b64u_decode(token.split(".")[1]))["jti"]
            assert len(b64u_decode(jti)) == 16
            seen.add(jti)
    assert len(seen) == 4 * 25


def test_wrong_key_or_algorithm_is_refused_by_pyjwt(keys):
    """Sanity of the verification above: it does fail when it should."""
    config = {"alg": "HS256", "jti": "x"}
    secret_arg, hmac_secret, _ = keys["HS256"][0]
    token = dict(sign(config, secret_arg)["headers"])["Authorization"].removeprefix("Bearer ")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, hmac_secret + "x", algorithms=["HS256"])
    rs_arg, rs_pub, _ = keys["RS256"][0]
    token = dict(sign({"alg": "RS256"}, rs_arg)["headers"])["Authorization"].removeprefix("Bearer ")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, rs_pub, algorithms=["ES256"])


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", "hs256", "HS384", "PS256"])
def test_unsigned_or_unknown_algorithms_cannot_be_minted(keys, alg):
    p = latchkey({"alg": alg}, keys["HS256"][0][0])
    assert p.returncode != 0 and p.stdout == ""
    assert "`alg`" in p.stderr


def test_key_material_never_in_errors(keys, tmp_path):
    """A mismatched key is refused without echoing any of it."""
    rsa_arg = keys["RS256"][0][0]
    pem_text = Path(rsa_arg.removeprefix("key=@")).read_text()
    for alg in ["HS256", "ES256", "EdDSA"]:
        p = latchkey({"alg": alg}, rsa_arg)
        assert p.returncode != 0
        for line in pem_text.splitlines()[1:-1]:
            assert line not in p.stderr
    short = "s3cr3t-" * 4  # 28 bytes
    p = latchkey({"alg": "HS256"}, f"key={short}")
    assert p.returncode != 0 and "32 bytes" in p.stderr and short not in p.stderr


def test_golden_vectors_verify_with_pyjwt():
    """Every token in tests/vectors/jwt.json is valid for PyJWT as well."""
    cases = [c for c in json.loads(VECTORS.read_text())["cases"] if "expect" in c]
    assert len(cases) >= 5
    for c in cases:
        config, key = c["config"], c["secrets"]["key"]
        alg = config["alg"]
        vkey = key if alg == "HS256" else serialization.load_pem_private_key(key.encode(), None).public_key()
        name, prefix = config.get("header", "Authorization"), config.get("prefix", "Bearer ")
        value = next(v for n, v in c["expect"]["headers"] if n.lower() == name.lower())
        token = value.removeprefix(prefix)
        iat = int(datetime.fromisoformat(c["at"].replace("Z", "+00:00")).timestamp())
        claims = verify(token, alg, vkey, config)
        assert claims == expected_claims(config, iat, config["jti"]), c["name"]
        assert b64u_decode(token.split(".")[1]).decode() == compact(claims), c["name"]
