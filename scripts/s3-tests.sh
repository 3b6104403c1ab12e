#!/usr/bin/env bash
# Run the functional suite of ceph/s3-tests against `store s3 serve` on a local cluster.
#
#   scripts/s3-tests.sh S3TESTS_DIR [pytest arguments...]
#
# S3TESTS_DIR is a checkout of https://github.com/ceph/s3-tests; its requirements must be
# installed for the Python in $S3TESTS_PYTHON (default: python3), e.g. in a venv made with
# `python3 -m venv /tmp/s3t && /tmp/s3t/bin/pip install -r S3TESTS_DIR/requirements.txt`.
# A cluster (master and three daemons) and a gateway are started in a temporary folder,
# three users are made (main, alt, tenant), and the suite runs without the groups of
# features the gateway does not implement (see docs/s3.md). Everything is stopped after.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
suite=$(cd "${1:?usage: $0 S3TESTS_DIR [pytest arguments...]}" && pwd)
shift
python=${S3TESTS_PYTHON:-python3}
store=$here/.venv/bin/store
dir=$(mktemp -d /tmp/store-s3tests.XXXXXX)
gw=
cleanup() {
    status=$?
    set +e
    if [ -n "$gw" ]; then
        kill "$gw" 2>/dev/null
        wait "$gw" 2>/dev/null
    fi
    "$store" cluster down --dir "$dir/cluster" >/dev/null 2>&1
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT

"$store" cluster up --dir "$dir/cluster" >/dev/null
export STORE_CONF=$dir/cluster/store.conf
for user in main alt tenant; do
    "$store" s3 user create "$user" --json > "$dir/$user.json"
done
port=$("$here/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$store" s3 serve --listen "127.0.0.1:$port" > "$dir/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.2
done

"$here/.venv/bin/python" - "$dir" "$port" <<'PY'
import json, sys
folder, port = sys.argv[1], sys.argv[2]
sections = [f"[DEFAULT]\nhost = 127.0.0.1\nport = {port}\nis_secure = False\nssl_verify = False\n",
            "[fixtures]\nbucket prefix = s3t-{random}-\n"]
for user, label in (("main", "s3 main"), ("alt", "s3 alt"), ("tenant", "s3 tenant")):
    record = json.load(open(f"{folder}/{user}.json"))
    sections.append(
        f"[{label}]\ndisplay_name = {user}\nuser_id = {record['id']}\n"
        f"email = {user}@example.com\naccess_key = {record['access_key']}\n"
        f"secret_key = {record['secret_key']}\ntenant = {user}\n"
    )
# Sections the suite reads even when their tests are left out.
for label in ("iam", "iam root", "iam alt root"):
    sections.append(
        f"[{label}]\nemail = none@example.com\nuser_id = none\ndisplay_name = none\n"
        "access_key = NONE\nsecret_key = none\n"
    )
open(f"{folder}/s3tests.conf", "w").write("\n".join(sections))
PY

left_out=(lifecycle lifecycle_expiration lifecycle_transition
    encryption sse_s3 s3select s3website s3website_routing_rules s3website_redirect_location
    iam_account iam_cross_account iam_role iam_tenant iam_user test_of_sts sns
    bucket_logging bucket_logging_cleanup fails_without_logging_rollover cloud_transition
    cloud_restore fails_on_aws appendobject storage_class group group_policy role_policy
    user_policy webidentity_test abac_test bucket_encryption session_policy
    token_claims_trust_policy_test object_ownership)
markers=$(printf ' and not %s' "${left_out[@]}")
markers=${markers# and }
cd "$suite"
# test_post_object_success_redirect_action follows a redirect to an Internet host.
S3TEST_CONF=$dir/s3tests.conf "$python" -m pytest s3tests/functional/test_s3.py \
    -m "$markers" -k "not success_redirect_action" -p no:cacheprovider -q -rf "$@"
