"""Amazon ECR without static credentials, against moto's ECR (and STS) API and a real registry.

The registry's htpasswd holds exactly the user and password moto's GetAuthorizationToken
encodes (`AWS:<account>-auth-token`), so a pull through regcache works only if regcache got the
token from the API and answered the registry's challenge with it. The ECR host name cannot be
reached from here: `--upstream <account>.dkr.ecr.<region>.amazonaws.com=<loopback registry>`
maps it (a name given by --upstream is neither resolved nor refused by the SSRF guard), and
AWS_ENDPOINT_URL_ECR or the creds-file entry's `endpoint` points the API calls at moto.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from regcache.credentials import EcrAuth
from regcache.upstream.ecr import AwsEcrApi, EcrUnavailable
from tests.peers.images import Image, build_image, make_layer, push, random_layer
from tests.peers.moto import MotoServer, ecr_credentials
from tests.peers.net import PROXY_VARS, free_port
from tests.peers.registry import Registry
from tests.support import Regcache, log_lines, request

ACCOUNT = "123456789012"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
REPO = "team/app"
USER, PASSWORD = ecr_credentials(ACCOUNT)
FAILURE_LINE = "cannot get an ECR token"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def refreshes(cache: Regcache, registry: str, result: str) -> float:
    return cache.metrics().get(f'regcache_ecr_token_refresh_total{{registry="{registry}",result="{result}"}}', 0.0)


def aws_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Static keys from the environment (moto takes any), nothing from this machine's AWS files
    or an instance metadata service."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAREGCACHETEST",
        "AWS_SECRET_ACCESS_KEY": "regcache-test-secret",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.update(extra)
    return env


def pull_all(cache: Regcache, ns: str, image: Image) -> None:
    manifest = cache.manifest(ns, REPO, image.tag)
    assert manifest.status == 200, manifest.body
    assert manifest.body == image.manifest_bytes
    for digest in image.blob_digests:
        blob = cache.blob(ns, REPO, digest)
        assert blob.status == 200, blob.body
        assert blob.body == image.blob(digest)


def assert_no_token_in_log(cache: Regcache) -> None:
    log = cache.log()
    assert "regcache.access" in log, "regcache logged no request at all: nothing was checked"
    for secret in (PASSWORD, basic(USER, PASSWORD).split()[1]):
        assert secret not in log, f"the ECR token is in the regcache log ({cache.log_path})"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    layers = [make_layer({"etc/ecr.txt": b"from a private ECR repository\n"}), random_layer(256 * 1024, seed=83)]
    return build_image(tmp_path_factory.mktemp("ecr-layout"), layers, "1.0")


@pytest.fixture(scope="module")
def ecr_registry(tmp_path_factory: pytest.TempPathFactory, image: Image) -> Iterator[Registry]:
    """A registry that accepts the user and password moto's token encodes, and nothing else."""
    registry = Registry(tmp_path_factory.mktemp("ecr-registry"), htpasswd=(USER, PASSWORD))
    try:
        registry.start()
        push(image, f"{registry.host}/{REPO}:{image.tag}", creds=(USER, PASSWORD))
        yield registry
    finally:
        registry.close()


def test_the_api_call_decodes_moto_s_token(moto, monkeypatch):
    """The one aiobotocore call, in-process: registryIds asked for, expiresAt read."""
    for name in (*PROXY_VARS, "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env(Path("/nonexistent")).items():
        monkeypatch.setenv(name, value)
    token = asyncio.run(AwsEcrApi()(EcrAuth(region="eu-west-1", registry_id="210987654321", endpoint=moto.url)))
    assert (token.credentials.username, token.credentials.password) == ecr_credentials("210987654321")
    assert token.expires_at < 1.5e9  # moto dates its tokens 2015-01-01

    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EcrUnavailable, match="Could not connect"):
        asyncio.run(AwsEcrApi()(EcrAuth(region="eu-west-1", endpoint=closed)))


def test_an_ecr_host_is_pulled_with_a_token_from_ecr(make_regcache, moto, ecr_registry, image, tmp_path):
    anonymous = request(f"{ecr_registry.url}/v2/{REPO}/manifests/{image.tag}")
    assert anonymous.status == 401, "the stand-in registry must refuse clients without the token"
    calls_before = moto.api_calls()
    cache = make_regcache(
        "--upstream",
        f"{ECR_HOST}={ecr_registry.url}",
        "--log-level",
        "debug",  # where botocore logs API answers, the token's among them
        env=aws_env(tmp_path, AWS_ENDPOINT_URL_ECR=moto.url),
    )
    pull_all(cache, ECR_HOST, image)
    assert refreshes(cache, ECR_HOST, "ok") == 1
    assert refreshes(cache, ECR_HOST, "error") == 0
    assert moto.api_calls() - calls_before == 1
    [got] = log_lines(cache.log(), f"upstream {ECR_HOST}: ECR token for account {ACCOUNT} in eu-west-1")
    assert "expires 2015-01-01" in got
    assert_no_token_in_log(cache)


def test_many_requests_at_once_share_one_token_call(make_regcache, moto, ecr_registry, image, tmp_path):
    calls_before = moto.api_calls()
    cache = make_regcache(
        "--upstream", f"{ECR_HOST}={ecr_registry.url}", env=aws_env(tmp_path, AWS_ENDPOINT_URL_ECR=moto.url)
    )
    targets = [("manifest", image.tag)] * 4 + [("blob", d) for d in image.blob_digests for _ in range(4)]

    def fetch(target: tuple[str, str]) -> int:
        kind, ref = target
        answer = cache.manifest(ECR_HOST, REPO, ref) if kind == "manifest" else cache.blob(ECR_HOST, REPO, ref)
        return answer.status

    with ThreadPoolExecutor(len(targets)) as pool:
        statuses = list(pool.map(fetch, targets))
    assert statuses == [200] * len(targets)
    assert refreshes(cache, ECR_HOST, "ok") == 1, f"{len(targets)} requests at once asked ECR more than once"
    assert moto.api_calls() - calls_before == 1


def test_irsa_web_identity_with_a_creds_file_entry_marked_ecr(make_regcache, moto, ecr_registry, image, tmp_path):
    """No static keys: the role comes from a web identity token (as EKS mounts it) through STS,
    and the registry is an ordinary name whose creds-file entry says it is ECR."""
    name = "ecr.internal.test"
    creds = tmp_path / "creds.yaml"
    creds.write_text(json.dumps({name: {"ecr": {"region": "eu-west-1", "endpoint": moto.url}}}))
    token_file = tmp_path / "web-identity-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cmVnY2FjaGUifQ.sig")
    env = aws_env(
        tmp_path,
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
        AWS_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/regcache",
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file),
        AWS_ENDPOINT_URL_STS=moto.url,
    )
    calls_before = moto.api_calls()
    cache = make_regcache("--upstream", f"{name}={ecr_registry.url}", "-f", str(creds), "-l", "debug", env=env)
    pull_all(cache, name, image)
    assert refreshes(cache, name, "ok") == 1
    assert moto.api_calls() - calls_before == 2, "expected AssumeRoleWithWebIdentity, then GetAuthorizationToken"
    assert_no_token_in_log(cache)
    assert token_file.read_text() not in cache.log(), "the web identity token is in the log"


def test_ecr_down_gives_the_registry_s_401_and_one_log_line(make_regcache, ecr_registry, image, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    cache = make_regcache(
        "--upstream", f"{ECR_HOST}={ecr_registry.url}", env=aws_env(tmp_path, AWS_ENDPOINT_URL_ECR=closed)
    )
    challenge = request(f"{ecr_registry.url}/v2/{REPO}/manifests/{image.tag}").header("WWW-Authenticate")
    assert challenge and challenge.startswith("Basic realm=")

    manifest = cache.manifest(ECR_HOST, REPO, image.tag)
    assert manifest.status == 401 and manifest.header("WWW-Authenticate") == challenge
    with ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(lambda d: cache.blob(ECR_HOST, REPO, d), image.blob_digests * 4))
    assert [b.status for b in blobs] == [401] * len(blobs)
    assert all(b.header("WWW-Authenticate") == challenge for b in blobs)
    assert cache.manifest(ECR_HOST, REPO, image.tag).status == 401

    lines = log_lines(cache.log(), FAILURE_LINE)
    assert len(lines) == 1, lines
    assert ECR_HOST in lines[0] and "Could not connect to the endpoint URL" in lines[0]
    assert refreshes(cache, ECR_HOST, "error") == 1, "ECR was asked again inside the backoff"

    # The client's own credentials (containerd's, from its hosts.toml or a credential helper) go up.
    own = cache.manifest(ECR_HOST, REPO, image.tag, Authorization=basic(USER, PASSWORD))
    assert own.status == 200 and own.body == image.manifest_bytes
