"""The AWS CLI, s3cmd and rclone against the gateway, configured in temporary directories.

Each tool must be installed: a missing tool fails its test (it is part of what the
gateway promises to work with)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.clients.s3.conftest import REGION, Gateway, User, clean_env

MIB = 1024 * 1024


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (see scripts/debian-test-packages.txt)"
    return path


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        path = root / f"d{i % 7}" / f"sub{i % 3}" / f"file-{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"file {i}\n".encode() * (1 + i % 5))


def same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    return all(filecmp.cmp(a / p, b / p, shallow=False) for p in left)


# --- AWS CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(
    tmp_path_factory: pytest.TempPathFactory, user: User, gateway: Gateway
) -> tuple[list[str], dict[str, str]]:
    home = tmp_path_factory.mktemp("awscli")
    (home / "credentials").write_text(
        f"[default]\naws_access_key_id = {user.access_key}\naws_secret_access_key = {user.secret_key}\n"
    )
    (home / "config").write_text(f"[default]\nregion = {REGION}\n")
    env = clean_env(
        AWS_CONFIG_FILE=str(home / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        HOME=str(home),
    )
    return [tool("aws"), "--endpoint-url", gateway.url], env


def test_aws_s3_commands(aws: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    base, env = aws
    bucket = f"s3://cli-{uuid.uuid4().hex[:12]}"
    run([*base, "s3", "mb", bucket], env)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(100 * MIB))  # sent as a multipart upload
    run([*base, "s3", "cp", "--only-show-errors", str(big), f"{bucket}/big.bin"], env)
    listing = run([*base, "s3", "ls", f"{bucket}/"], env)
    assert "104857600 big.bin" in listing
    back = tmp_path / "back.bin"
    run([*base, "s3", "cp", "--only-show-errors", f"{bucket}/big.bin", str(back)], env)
    assert filecmp.cmp(big, back, shallow=False)
    tree = tmp_path / "tree"
    make_tree(tree, 500)
    run([*base, "s3", "sync", "--only-show-errors", str(tree), f"{bucket}/tree"], env)
    again = run([*base, "s3", "sync", str(tree), f"{bucket}/tree"], env)
    assert again.strip() == ""  # nothing left to send
    copy = tmp_path / "copy"
    run([*base, "s3", "sync", "--only-show-errors", f"{bucket}/tree", str(copy)], env)
    assert same_tree(tree, copy)
    recursive = run([*base, "s3", "ls", "--recursive", f"{bucket}/tree/"], env)
    assert len(recursive.strip().splitlines()) == 500
    run([*base, "s3", "rm", "--only-show-errors", "--recursive", bucket], env)
    run([*base, "s3", "rb", bucket], env)
    assert bucket[5:] not in run([*base, "s3", "ls"], env)


def test_aws_s3api_commands(aws: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    base, env = aws
    bucket = f"api-{uuid.uuid4().hex[:12]}"
    run([*base, "s3api", "create-bucket", "--bucket", bucket], env)
    body = tmp_path / "body.txt"
    body.write_text("s3api body\n")
    put = json.loads(
        run(
            [
                *base,
                "s3api",
                "put-object",
                "--bucket",
                bucket,
                "--key",
                "a/b.txt",
                "--body",
                str(body),
                "--content-type",
                "text/plain",
                "--metadata",
                "k=v",
            ],
            env,
        )
    )
    head = json.loads(
        run([*base, "s3api", "head-object", "--bucket", bucket, "--key", "a/b.txt"], env)
    )
    assert head["ETag"] == put["ETag"] and head["Metadata"] == {"k": "v"}
    assert head["ContentType"] == "text/plain"
    listed = json.loads(
        run([*base, "s3api", "list-objects-v2", "--bucket", bucket, "--delimiter", "/"], env)
    )
    assert listed["CommonPrefixes"] == [{"Prefix": "a/"}]
    out = tmp_path / "out.txt"
    run(
        [
            *base,
            "s3api",
            "get-object",
            "--bucket",
            bucket,
            "--key",
            "a/b.txt",
            "--range",
            "bytes=0-4",
            str(out),
        ],
        env,
    )
    assert out.read_text() == "s3api"
    run(
        [
            *base,
            "s3api",
            "copy-object",
            "--bucket",
            bucket,
            "--key",
            "c.txt",
            "--copy-source",
            f"{bucket}/a/b.txt",
        ],
        env,
    )
    location = json.loads(run([*base, "s3api", "get-bucket-location", "--bucket", bucket], env))
    assert location["LocationConstraint"] is None
    run(
        [
            *base,
            "s3api",
            "delete-objects",
            "--bucket",
            bucket,
            "--delete",
            "Objects=[{Key=a/b.txt},{Key=c.txt}]",
        ],
        env,
    )
    run([*base, "s3api", "delete-bucket", "--bucket", bucket], env)


# --- s3cmd -----------------------------------------------------------------------------------


def test_s3cmd(tmp_path: Path, user: User, gateway: Gateway) -> None:
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {user.access_key}\n"
        f"secret_key = {user.secret_key}\n"
        f"host_base = 127.0.0.1:{gateway.port}\n"
        f"host_bucket = 127.0.0.1:{gateway.port}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        f"bucket_location = {REGION}\n"
    )
    base = [tool("s3cmd"), "-c", str(config), "--no-progress"]
    env = clean_env(HOME=str(tmp_path))
    bucket = f"s3://s3cmd-{uuid.uuid4().hex[:12]}"
    run([*base, "mb", bucket], env)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(20 * MIB))  # multipart (s3cmd's chunks are 15 MiB)
    run([*base, "put", str(data), f"{bucket}/data.bin"], env)
    assert "20971520" in run([*base, "ls", bucket], env)
    back = tmp_path / "back.bin"
    run([*base, "get", f"{bucket}/data.bin", str(back)], env)
    assert filecmp.cmp(data, back, shallow=False)
    info = run([*base, "info", f"{bucket}/data.bin"], env)
    assert "File size: 20971520" in info
    tree = tmp_path / "tree"
    make_tree(tree, 40)
    run([*base, "sync", f"{tree}/", f"{bucket}/tree/"], env)
    copy = tmp_path / "copy"
    copy.mkdir()
    run([*base, "sync", f"{bucket}/tree/", f"{copy}/"], env)
    assert same_tree(tree, copy)
    run([*base, "del", "--recursive", "--force", bucket], env)
    run([*base, "rb", bucket], env)


# --- rclone ----------------------------------------------------------------------------------


def test_rclone_sync_and_check(tmp_path: Path, user: User, gateway: Gateway) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[gw]\n"
        "type = s3\n"
        "provider = Other\n"
        f"access_key_id = {user.access_key}\n"
        f"secret_access_key = {user.secret_key}\n"
        f"endpoint = {gateway.url}\n"
        f"region = {REGION}\n"
    )
    base = [tool("rclone"), "--config", str(config)]
    env = clean_env(HOME=str(tmp_path))
    bucket = f"rclone-{uuid.uuid4().hex[:12]}"
    tree = tmp_path / "tree"
    make_tree(tree, 120)
    (tree / "large.bin").write_bytes(os.urandom(12 * MIB))  # rclone uploads it in parts
    run([*base, "mkdir", f"gw:{bucket}"], env)
    run([*base, "sync", str(tree), f"gw:{bucket}/tree"], env)
    run([*base, "check", str(tree), f"gw:{bucket}/tree"], env)
    back = tmp_path / "back"
    run([*base, "sync", f"gw:{bucket}/tree", str(back)], env)
    assert same_tree(tree, back)
    # A change and a deletion, synced again, checked again.
    (tree / "d0" / "sub0" / "file-0000.txt").write_text("changed\n")
    (tree / "d1" / "sub1" / "file-0001.txt").unlink()
    run([*base, "sync", str(tree), f"gw:{bucket}/tree"], env)
    run([*base, "check", str(tree), f"gw:{bucket}/tree"], env)
    run([*base, "purge", f"gw:{bucket}"], env)
