#!/usr/bin/env python3
"""Checks template.yaml against what the code and the issue require.

Run it with the project's tool virtualenv (infra/scripts/check-template.sh
does):

    .venv/bin/python infra/scripts/test_template.py     # plain runner
    .venv/bin/python -m pytest infra/scripts/test_template.py

The template is read with a YAML loader that understands CloudFormation's
short-form tags (!Ref, !GetAtt, !Sub, ...). Where the code defines a name or
a number the template must agree with (queue names, key schema, the receive
count before dead-lettering, environment variables), the test reads it from
the Rust source rather than repeating it. The last test runs the SAM
transform (samtranslator, installed with aws-sam-cli) to prove that SAM adds
no permission of its own.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("MAOF_TEMPLATE", ROOT / "template.yaml"))


# ----------------------------------------------------------------- loading


class CfnLoader(yaml.SafeLoader):
    """A SafeLoader that turns `!Ref X` into {"Ref": "X"}, `!Sub s` into
    {"Fn::Sub": s}, `!GetAtt A.B` into {"Fn::GetAtt": ["A", "B"]}, etc."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict:
    with TEMPLATE.open() as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 - a SafeLoader subclass


T = load_template()
RES = T["Resources"]
PARAMS = T["Parameters"]
GLOBAL_FN = T.get("Globals", {}).get("Function", {})


def resources(kind: str) -> dict:
    return {k: v for k, v in RES.items() if v["Type"] == kind}


def function(logical_id: str) -> dict:
    """A Serverless::Function's properties with the Globals merged in."""
    props = copy.deepcopy(GLOBAL_FN)
    own = RES[logical_id]["Properties"]
    for key, value in own.items():
        if key == "Environment":
            env = props.setdefault("Environment", {}).setdefault("Variables", {})
            env.update(value.get("Variables", {}))
        else:
            props[key] = value
    return props


FUNCTIONS = sorted(resources("AWS::Serverless::Function"))


# --------------------------------------------------------------- resolving


def ref_target(value) -> str | None:
    """The logical id a !Ref / !GetAtt X.Arn points at."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def canonical(value) -> str:
    """A stable text for an IAM resource: `*`, `Ref(X)`, `GetAtt(X.Arn)`, `Sub(...)`."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"Ref({value['Ref']})"
    if "Fn::GetAtt" in value:
        return f"GetAtt({'.'.join(value['Fn::GetAtt'])})"
    if "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        assert isinstance(sub, str), f"Sub with variables map: {sub}"
        return f"Sub({sub})"
    raise AssertionError(f"unexpected IAM resource form: {value}")


def listify(value) -> list:
    return value if isinstance(value, list) else [value]


def param_values(name: str) -> list[int]:
    """Every value a numeric parameter may take (its AllowedValues, else its default)."""
    p = PARAMS[name]
    if "AllowedValues" in p:
        return [int(v) for v in p["AllowedValues"]]
    return [int(p["Default"])]


def timeouts_of(fn: str) -> list[int]:
    timeout = function(fn)["Timeout"]
    if isinstance(timeout, dict):
        return param_values(timeout["Ref"])
    return [int(timeout)]


def visibility_for(queue: str, timeout: int, fn: str) -> int:
    """The queue's visibility timeout when its consumer `fn` has `timeout`."""
    vis = RES[queue]["Properties"]["VisibilityTimeout"]
    if isinstance(vis, int):
        return vis
    mapping, key, attr = vis["Fn::FindInMap"]
    fn_timeout = function(fn)["Timeout"]
    assert key == fn_timeout, (
        f"{queue}'s visibility is looked up by {key}, but {fn}'s timeout is {fn_timeout}"
    )
    return int(T["Mappings"][mapping][str(timeout)][attr])


# --------------------------------------------------------- facts from code


def rust(path: str) -> str:
    return (ROOT / path).read_text()


def code_max_receives() -> int:
    m = re.search(r"pub const MAX_RECEIVES: u32 = (\d+);", rust("shared/src/setup.rs"))
    assert m, "MAX_RECEIVES not found in shared/src/setup.rs"
    return int(m.group(1))


def code_queue_names() -> dict[str, str]:
    """QueueName variant -> the name suffix `as_str` gives it."""
    src = rust("shared/src/ports/queue.rs")
    pairs = dict(re.findall(r'QueueName::(\w+) => "([a-z-]+)"', src))
    assert pairs, "QueueName::as_str not found"
    return pairs


def code_key_constants() -> dict[str, str]:
    src = rust("shared/src/adapters/layout/keys.rs")
    return dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', src))


# The template's queue for each QueueName (logical ids).
QUEUE_OF = {
    "Route": "RouteQueue",
    "AgentCall": "AgentCallQueue",
    "Aggregate": "AggregateQueue",
    "RouteDlq": "RouteDlq",
    "AgentCallDlq": "AgentCallDlq",
    "AggregateDlq": "AggregateDlq",
}
WORK_QUEUES = {  # work queue -> its DLQ
    "RouteQueue": "RouteDlq",
    "AgentCallQueue": "AgentCallDlq",
    "AggregateQueue": "AggregateDlq",
    "InboxQueue": "InboxDlq",
}
STAGES = {  # stage function -> the queues it consumes
    "Route": {"RouteQueue", "RouteDlq"},
    "AgentCall": {"AgentCallQueue", "AgentCallDlq"},
    "Aggregate": {"AggregateQueue", "AggregateDlq"},
    "Events": {"InboxQueue"},
}


def sqs_events(fn: str) -> dict:
    events = RES[fn]["Properties"].get("Events", {})
    return {k: e for k, e in events.items() if e["Type"] == "SQS"}


# ------------------------------------------------------------------- tests


def test_queue_names_match_the_code():
    names = code_queue_names()
    assert set(names) == set(QUEUE_OF), f"QueueName variants changed: {sorted(names)}"
    for variant, suffix in names.items():
        queue = RES[QUEUE_OF[variant]]["Properties"]["QueueName"]
        assert queue == {"Fn::Sub": f"${{Prefix}}-{suffix}"}, (QUEUE_OF[variant], queue)
    assert RES["InboxQueue"]["Properties"]["QueueName"] == {"Fn::Sub": "${Prefix}-inbox"}
    assert RES["InboxDlq"]["Properties"]["QueueName"] == {"Fn::Sub": "${Prefix}-inbox-dlq"}


def test_work_queues_redrive_to_their_dlq_after_max_receives():
    max_receives = code_max_receives()
    assert max_receives == 5
    for queue, dlq in WORK_QUEUES.items():
        redrive = RES[queue]["Properties"].get("RedrivePolicy")
        assert redrive, f"{queue} has no RedrivePolicy"
        assert ref_target(redrive["deadLetterTargetArn"]) == dlq, (queue, redrive)
        assert redrive["deadLetterTargetArn"]["Fn::GetAtt"][1] == "Arn"
        assert int(redrive["maxReceiveCount"]) == max_receives, (queue, redrive)
    for dlq in WORK_QUEUES.values():
        props = RES[dlq]["Properties"]
        assert "RedrivePolicy" not in props, f"{dlq} must not redrive further"
        assert props["MessageRetentionPeriod"] == 14 * 24 * 3600, dlq
        # lambda.rs tells a DLQ record by its source ARN's `-dlq` suffix.
        assert props["QueueName"]["Fn::Sub"].endswith("-dlq"), dlq


def test_stage_functions_consume_their_work_queue_and_its_dlq():
    for fn, queues in STAGES.items():
        consumed = {ref_target(e["Properties"]["Queue"]) for e in sqs_events(fn).values()}
        assert consumed == queues, (fn, consumed)
    assert not sqs_events("Intake")
    # Every queue with a consumer has exactly one.
    seen: dict[str, str] = {}
    for fn in FUNCTIONS:
        for e in sqs_events(fn).values():
            q = ref_target(e["Properties"]["Queue"])
            assert q not in seen, f"{q} consumed by {seen[q]} and {fn}"
            seen[q] = fn


def test_visibility_timeout_at_least_six_times_the_consumers_timeout():
    checked = 0
    for fn in FUNCTIONS:
        for name, event in sqs_events(fn).items():
            queue = ref_target(event["Properties"]["Queue"])
            window = int(event["Properties"]["MaximumBatchingWindowInSeconds"])
            for timeout in timeouts_of(fn):
                vis = visibility_for(queue, timeout, fn)
                # AWS: at least 6 x the function timeout, plus the batching window.
                assert vis >= 6 * timeout + window, (fn, name, queue, timeout, vis)
                assert vis <= 43200, (queue, vis)
                checked += 1
    assert checked > 0
    # With the defaults, spelled out.
    for fn, queue in [("Route", "RouteQueue"), ("AgentCall", "AgentCallQueue"),
                      ("Aggregate", "AggregateQueue"), ("Events", "InboxQueue")]:
        default = int(PARAMS[function(fn)["Timeout"]["Ref"]]["Default"])
        assert visibility_for(queue, default, fn) >= 6 * default, (fn, queue)


def test_every_sqs_event_reports_batch_item_failures_with_batching_set():
    count = 0
    for fn in FUNCTIONS:
        for name, event in sqs_events(fn).items():
            props = event["Properties"]
            assert props.get("FunctionResponseTypes") == ["ReportBatchItemFailures"], (fn, name)
            assert isinstance(props.get("BatchSize"), int) and 1 <= props["BatchSize"] <= 10, (fn, name)
            assert isinstance(props.get("MaximumBatchingWindowInSeconds"), int), (fn, name)
            count += 1
    assert count == 7, count  # 3 stages x (work + DLQ) + the inbox


def test_agent_call_trigger_has_a_maximum_concurrency():
    work = [e for e in sqs_events("AgentCall").values()
            if ref_target(e["Properties"]["Queue"]) == "AgentCallQueue"]
    assert len(work) == 1
    scaling = work[0]["Properties"].get("ScalingConfig", {})
    assert scaling.get("MaximumConcurrency") == {"Ref": "AgentCallMaxConcurrency"}
    param = PARAMS["AgentCallMaxConcurrency"]
    assert 2 <= param["MinValue"] <= param["Default"] <= param["MaxValue"] <= 1000


def test_queues_are_encrypted_and_pin_the_message_size_the_memory_queue_enforces():
    limit = int(re.search(r"pub const MAX_MESSAGE_BYTES: usize = ([\d_]+);",
                          rust("shared/src/ports/queue.rs")).group(1).replace("_", ""))
    for queue, q in resources("AWS::SQS::Queue").items():
        props = q["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, queue
        assert props.get("MaximumMessageSize") == limit, queue


def test_the_claim_check_bucket_is_private_encrypted_tls_only_and_expires_with_the_tables():
    buckets = resources("AWS::S3::Bucket")
    assert set(buckets) == {"BlobBucket"}
    props = buckets["BlobBucket"]["Properties"]
    assert "BucketName" not in props, "CloudFormation names it: bucket names are global"
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # Blobs live as long as the items that refer to them (the table TTL).
    retention_secs = re.search(r"DEFAULT_RETENTION: Duration = Duration::from_secs\(([\d* ]+)\)",
                               rust("shared/src/adapters/aws/task_store.rs")).group(1)
    days = eval(retention_secs) // 86400  # e.g. "30 * 24 * 3600"
    rules = props["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("ExpirationInDays") == days for r in rules), rules
    policy = resources("AWS::S3::BucketPolicy")["BlobBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "BlobBucket"}
    tls = [st for st in policy["PolicyDocument"]["Statement"] if st["Effect"] == "Deny"]
    assert tls and tls[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert "MAOF_BLOB_BUCKET" in rust("shared/src/adapters/aws/mod.rs")
    for fn in FUNCTIONS:
        assert function(fn)["Environment"]["Variables"]["MAOF_BLOB_BUCKET"] == {"Ref": "BlobBucket"}


def test_tables_key_schema_billing_ttl_pitr_sse():
    keys = code_key_constants()
    pk, sk, gsi1, gsi1pk, gsi1sk = (keys[k] for k in ("PK", "SK", "GSI1", "GSI1_PK", "GSI1_SK"))
    # The TTL attribute is the items' `expires_at` field (serde names it so).
    ttl = keys.get("TTL", "expires_at")
    assert re.search(rf"\b{ttl}: i64,", rust("shared/src/adapters/layout/mod.rs")), ttl
    tables = resources("AWS::DynamoDB::Table")
    assert set(tables) == {"ContextTable", "RegistryTable"}
    assert tables["ContextTable"]["Properties"]["TableName"] == {"Fn::Sub": "${Prefix}-context"}
    assert tables["RegistryTable"]["Properties"]["TableName"] == {"Fn::Sub": "${Prefix}-registry"}
    for name, table in tables.items():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
        assert props["KeySchema"] == [
            {"AttributeName": pk, "KeyType": "HASH"},
            {"AttributeName": sk, "KeyType": "RANGE"},
        ], name
        assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}, name
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, name
        assert props["SSESpecification"]["SSEEnabled"] is True, name
        assert table.get("DeletionPolicy") == "Retain", name
        attrs = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
        expected = {pk: "S", sk: "S"}
        if name == "ContextTable":
            sweep, shard, at = (keys[k] for k in ("SWEEP_INDEX", "SWEEP_SHARD", "SWEEP_AT"))
            expected |= {gsi1pk: "S", gsi1sk: "S", shard: "S", at: "N"}
            assert props["GlobalSecondaryIndexes"] == [{
                "IndexName": gsi1,
                "KeySchema": [
                    {"AttributeName": gsi1pk, "KeyType": "HASH"},
                    {"AttributeName": gsi1sk, "KeyType": "RANGE"},
                ],
                # Keys only: a task's list entry is written once.
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }, {
                # The sweeper's sparse, sharded index: keys only.
                "IndexName": sweep,
                "KeySchema": [
                    {"AttributeName": shard, "KeyType": "HASH"},
                    {"AttributeName": at, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }]
        else:
            assert "GlobalSecondaryIndexes" not in props
        assert attrs == expected, (name, attrs)


def workspace_packages() -> set[str]:
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", rust("Cargo.toml")).group(1)
    names = set()
    for member in re.findall(r'"([^"]+)"', members):
        m = re.search(r'^name\s*=\s*"([^"]+)"', rust(f"{member}/Cargo.toml"), re.M)
        names.add(m.group(1))
    return names


def test_functions_are_rust_on_arm64_with_tracing():
    binaries = {}
    for fn in FUNCTIONS:
        props = function(fn)
        assert props["Runtime"] == "provided.al2023", fn
        assert props["Architectures"] == ["arm64"], fn
        assert props["Handler"] == "bootstrap", fn
        assert props["CodeUri"] == ".", fn  # the workspace root: one shared target dir
        assert props["Tracing"] == "Active", fn
        assert props["MemorySize"] == {"Ref": "FunctionMemory"}, fn
        assert isinstance(props["Timeout"], dict) and props["Timeout"]["Ref"] in PARAMS, fn
        meta = RES[fn]["Metadata"]
        assert meta["BuildMethod"] == "rust-cargolambda", fn
        binaries[fn] = meta["BuildProperties"]["Binary"]
    assert binaries == {
        "Intake": "intake", "Route": "route", "AgentCall": "agent-call",
        "Aggregate": "aggregate", "Events": "events", "Sweeper": "sweeper",
        "Announcer": "announcer",
    }
    packages = workspace_packages()
    for fn in ("Intake", "Route", "AgentCall", "Aggregate", "Sweeper", "Announcer"):
        assert binaries[fn] in packages, f"{binaries[fn]} is not a workspace package"
    # `events` is the inbox binary (functions/events); checked once it exists.
    if (ROOT / "functions/events/Cargo.toml").exists():
        assert "events" in packages


def test_functions_log_to_their_own_log_group_with_retention():
    for fn in FUNCTIONS:
        props = function(fn)
        name = props["FunctionName"]["Fn::Sub"]
        logging = props["LoggingConfig"]
        group = ref_target(logging["LogGroup"])
        group_props = RES[group]["Properties"]
        assert group_props["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{name}"}, fn
        assert group_props["RetentionInDays"] == {"Ref": "LogRetentionDays"}, fn
    access = RES["ApiAccessLogs"]["Properties"]
    assert access["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_environment_matches_what_the_code_reads():
    names = code_queue_names()
    setup = rust("shared/src/setup.rs")
    assert '"MAOF_QUEUE_URL_{}"' in setup and "replace('-', \"_\").to_uppercase()" in setup
    assert '"MAOF_AUDIT_RETENTION_DAYS"' in rust("shared/src/adapters/layout/mod.rs")
    assert PARAMS["AuditRetentionDays"]["Default"] == 400
    resource_src = rust("shared/src/adapters/aws/mod.rs")
    for var in ("MAOF_CONTEXT_TABLE", "MAOF_REGISTRY_TABLE", "MAOF_QUEUE_PREFIX"):
        assert var in resource_src, var
    for fn in FUNCTIONS:
        env = function(fn)["Environment"]["Variables"]
        assert env["MAOF_CONTEXT_TABLE"] == {"Ref": "ContextTable"}, fn
        assert env["MAOF_REGISTRY_TABLE"] == {"Ref": "RegistryTable"}, fn
        assert env["MAOF_QUEUE_PREFIX"] == {"Ref": "Prefix"}, fn
        assert env["RUST_LOG"] == {"Ref": "RustLog"}, fn
        assert env["MAOF_AUDIT_RETENTION_DAYS"] == {"Ref": "AuditRetentionDays"}, fn
        # Only the announcer publishes; no stage needs the bus.
        if fn == "Announcer":
            assert env["MAOF_EVENT_BUS"] == {"Ref": "EventBus"}, fn
        else:
            assert "MAOF_EVENT_BUS" not in env, fn
        # All six, or the code falls back to looking the queues up by name.
        for variant, suffix in names.items():
            var = "MAOF_QUEUE_URL_" + suffix.replace("-", "_").upper()
            assert env.get(var) == {"Ref": QUEUE_OF[variant]}, (fn, var)
    intake = function("Intake")["Environment"]["Variables"]
    assert "MAOF_JWT_SECRET_NAME" in rust("functions/intake/src/main.rs")
    assert intake["MAOF_JWT_SECRET_NAME"] == RES["JwtSecret"]["Properties"]["Name"]
    assert intake["AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"] == "true"
    # The authorizer's claims are trusted exactly when the authorizer is there.
    auth_src = rust("shared/src/api/auth/config.rs")
    for var, value in {
        "MAOF_JWT_TRUST_AUTHORIZER": {"Fn::If": ["HasJwtAuthorizer", "true", "false"]},
        "MAOF_JWT_ISSUER": {"Ref": "JwtIssuer"},
        "MAOF_JWT_AUDIENCE": {"Ref": "JwtAudience"},
        "MAOF_JWT_TENANT_CLAIM": {"Ref": "JwtTenantClaim"},
        "MAOF_JWT_ROLES_CLAIM": {"Ref": "JwtRolesClaim"},
    }.items():
        assert f'"{var}"' in auth_src, var
        assert intake[var] == value, (var, intake[var])
    assert "from_lambda_env" in rust("functions/intake/src/main.rs")
    for fn in FUNCTIONS:
        if fn != "Intake":
            env = function(fn)["Environment"]["Variables"]
            assert not any(v.startswith("MAOF_JWT_") for v in env), fn
    events = function("Events")["Environment"]["Variables"]
    assert events["MAOF_EVENT_TENANTS"] == {"Ref": "EventTenants"}
    assert events["MAOF_INBOX_TENANT"] == {"Ref": "InboxTenant"}
    inbox_src = ROOT / "shared/src/stages/inbox.rs"
    if inbox_src.exists():
        src = inbox_src.read_text()
        assert "MAOF_EVENT_TENANTS" in src and "MAOF_INBOX_TENANT" in src


# What each function may do, and on what. X-Ray's two actions have no
# resource-level permissions: they are the only `*` resource allowed.
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
GET, PUT, UPDATE, QUERY, SCAN, DELETE = (
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
    "dynamodb:Query", "dynamodb:Scan", "dynamodb:DeleteItem")
CONSUME = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
           "sqs:GetQueueAttributes"}
CONTEXT = "GetAtt(ContextTable.Arn)"
CONTEXT_INDEX = "Sub(${ContextTable.Arn}/index/gsi1)"
REGISTRY = "GetAtt(RegistryTable.Arn)"
BUS = "GetAtt(EventBus.Arn)"
BLOBS = "Sub(${BlobBucket.Arn}/*)"
PROVIDER_SECRETS = ("Sub(arn:${AWS::Partition}:secretsmanager:${AWS::Region}:"
                    "${AWS::AccountId}:secret:${ProviderSecretPrefix}*)")
BEDROCK = {
    "Sub(arn:${AWS::Partition}:bedrock:*::foundation-model/${BedrockModelPattern})",
    "Sub(arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:inference-profile/*)",
}


def grants(*pairs) -> set[tuple[str, str]]:
    out = set()
    for actions, res in pairs:
        for a in ([actions] if isinstance(actions, str) else actions):
            for r in ([res] if isinstance(res, str) else res):
                out.add((a, r))
    return out


def common(logs: str):
    return [(XRAY, "*"), ({"logs:CreateLogStream", "logs:PutLogEvents"}, f"GetAtt({logs}.Arn)")]


EXPECTED_ALLOW = {
    "IntakeRole": grants(
        *common("IntakeLogs"),
        ({GET, PUT, UPDATE, QUERY, "dynamodb:BatchGetItem"}, CONTEXT),
        (QUERY, CONTEXT_INDEX),
        ({GET, QUERY, PUT, DELETE}, REGISTRY),
        ("sqs:SendMessage", "GetAtt(RouteQueue.Arn)"),
        ("secretsmanager:GetSecretValue", "Ref(JwtSecret)"),
        ("s3:GetObject", BLOBS),
    ),
    "RouteRole": grants(
        *common("RouteLogs"),
        # PUT: a budget refusal's audit entry; GET: an agent's rate-limit
        # buckets, read when a refused take's item did not come back
        ({UPDATE, QUERY, PUT, GET}, CONTEXT),
        ({QUERY, GET}, REGISTRY),
        (CONSUME, {"GetAtt(RouteQueue.Arn)", "GetAtt(RouteDlq.Arn)"}),
        ("sqs:SendMessage", "GetAtt(AgentCallQueue.Arn)"),
    ),
    "AgentCallRole": grants(
        *common("AgentCallLogs"),
        ({GET, PUT, UPDATE, QUERY}, CONTEXT),
        ({QUERY, GET}, REGISTRY),
        (CONSUME, {"GetAtt(AgentCallQueue.Arn)", "GetAtt(AgentCallDlq.Arn)"}),
        ("sqs:SendMessage", "GetAtt(AggregateQueue.Arn)"),
        ("secretsmanager:GetSecretValue", PROVIDER_SECRETS),
        ("bedrock:InvokeModel", BEDROCK),
        ({"s3:PutObject", "s3:GetObject"}, BLOBS),
    ),
    "AggregateRole": grants(
        *common("AggregateLogs"),
        ({UPDATE, QUERY}, CONTEXT),
        (CONSUME, {"GetAtt(AggregateQueue.Arn)", "GetAtt(AggregateDlq.Arn)"}),
        ({"s3:PutObject", "s3:GetObject"}, BLOBS),
    ),
    "SweeperRole": grants(
        *common("SweeperLogs"),
        ({UPDATE, QUERY}, CONTEXT),
        (QUERY, "Sub(${ContextTable.Arn}/index/sweep)"),
        ("sqs:SendMessage", {"GetAtt(RouteQueue.Arn)", "GetAtt(AgentCallQueue.Arn)",
                             "GetAtt(AggregateQueue.Arn)"}),
    ),
    "AnnouncerRole": grants(
        *common("AnnouncerLogs"),
        (QUERY, CONTEXT),  # the finished task's request, for its event
        ({"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
          "dynamodb:ListStreams"}, "Sub(${ContextTable.Arn}/stream/*)"),
        ("sqs:SendMessage", "GetAtt(AnnounceFailures.Arn)"),
        ("events:PutEvents", BUS),
    ),
    "EventsRole": grants(
        *common("EventsLogs"),
        ({GET, PUT, UPDATE, QUERY}, CONTEXT),
        (GET, REGISTRY),  # the tenant's settings: rate limits and filters
        (CONSUME, "GetAtt(InboxQueue.Arn)"),
        ("sqs:SendMessage", "GetAtt(RouteQueue.Arn)"),
    ),
}
EXPECTED_DENY = {
    # `${Prefix}/jwt` may fall under the provider-key prefix.
    "AgentCallRole": grants(("secretsmanager:GetSecretValue", "Ref(JwtSecret)")),
}


def role_statements(role: str):
    props = RES[role]["Properties"]
    for policy in props.get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


def test_each_function_has_its_own_role():
    roles = resources("AWS::IAM::Role")
    assert set(roles) == set(EXPECTED_ALLOW)
    for fn in FUNCTIONS:
        role = function(fn)["Role"]
        assert role == {"Fn::GetAtt": [f"{fn}Role", "Arn"]}, fn
        assert "Policies" not in RES[fn]["Properties"], f"{fn}: SAM policies would bypass the role"
    for role, r in roles.items():
        props = r["Properties"]
        assert "ManagedPolicyArns" not in props, role
        trust = props["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                          "Action": "sts:AssumeRole"}], role
    assert not resources("AWS::IAM::Policy") and not resources("AWS::IAM::ManagedPolicy")


def test_no_wildcards_and_each_role_grants_exactly_what_its_function_needs():
    for role, expected in EXPECTED_ALLOW.items():
        allow, deny = set(), set()
        for st in role_statements(role):
            actions = listify(st["Action"])
            res = [canonical(r) for r in listify(st["Resource"])]
            for a in actions:
                assert a != "*" and not a.endswith(":*"), f"{role}: wildcard action {a}"
            if "*" in res:
                assert st["Effect"] == "Allow" and set(actions) <= XRAY, (
                    f"{role}: `*` resource for {actions}; only X-Ray's write actions need it")
            if st["Effect"] == "Allow":
                if "events:PutEvents" in actions:
                    assert st["Condition"] == {"StringEquals": {"events:source": "maof"}}, role
                allow |= grants((set(actions), set(res)))
            else:
                deny |= grants((set(actions), set(res)))
        assert allow == expected, (
            f"{role}: extra {sorted(allow - expected)}, missing {sorted(expected - allow)}")
        assert deny == EXPECTED_DENY.get(role, set()), (role, deny)
    # Only agent-call reads provider keys; only intake reads the JWT signing key.
    for role, expected in EXPECTED_ALLOW.items():
        secrets = {r for a, r in expected if a == "secretsmanager:GetSecretValue"}
        assert secrets == {"IntakeRole": {"Ref(JwtSecret)"},
                           "AgentCallRole": {PROVIDER_SECRETS}}.get(role, set()), role


# The DynamoDB actions behind each store method (shared/src/adapters/aws).
TASK_STORE_ACTIONS = {
    "get": {(QUERY, CONTEXT)},  # the request and state items, one query
    "get_with_calls": {(QUERY, CONTEXT)},
    # the request's put, then a transaction with the audit entry (one
    # transaction of all with a key); get on conflict
    "create": {(PUT, CONTEXT), (GET, CONTEXT)},
    "transition": {(UPDATE, CONTEXT), (QUERY, CONTEXT)},  # get (a query) when refused
    "lease_call": {(PUT, CONTEXT), (GET, CONTEXT)},  # get when moto returns no old item
    # likewise; a result that settles a budget reservation updates the
    # tenant's spend counters in the same transaction
    "put_call": {(PUT, CONTEXT), (GET, CONTEXT), (UPDATE, CONTEXT)},
    "record_call": {(UPDATE, CONTEXT)},
    # a single call's result, its settlement, its health and the task's
    # finish: one transaction of a put and updates
    "finish_with_call": {(PUT, CONTEXT), (UPDATE, CONTEXT)},
    "add_late_calls": {(UPDATE, CONTEXT), (QUERY, CONTEXT)},  # get when the task changed
    "list": {(QUERY, CONTEXT_INDEX), ("dynamodb:BatchGetItem", CONTEXT)},  # ids, then the tasks
    "due": {(QUERY, "Sub(${ContextTable.Arn}/index/sweep)")},
    "postpone": {(UPDATE, CONTEXT)},
    "spend": {(GET, CONTEXT)},  # the day's and the month's counters
}
REGISTRY_ACTIONS = {
    "get": {(GET, REGISTRY)},
    "list": {(QUERY, REGISTRY)},  # an owner's agents share a partition
    "put": {(PUT, REGISTRY), (GET, REGISTRY)},  # get on conflict
    "delete": {(DELETE, REGISTRY), (GET, REGISTRY)},
    "settings": {(GET, REGISTRY)},
    "put_settings": {(PUT, REGISTRY), (GET, REGISTRY)},
}
# The audit log: an entry recorded on its own (a refusal), or read; and an
# entry made with `AuditEntry::` goes into its action's write (a transaction
# with the action's item): a put in the context table either way.
AUDIT_ACTIONS = {"record": {(PUT, CONTEXT)}, "list": {(QUERY, CONTEXT)},
                 "entry": {(PUT, CONTEXT)}}
# A take of rate-limit buckets: a conditional update, and a read of the item
# when a refusal did not return it (shared/src/adapters/aws/limits.rs).
LIMITER_ACTIONS = {"take": {(UPDATE, CONTEXT), (GET, CONTEXT)},
                   "give_back": {(UPDATE, CONTEXT)},  # a take whose call is not made
                   "peek": {(GET, CONTEXT)}}  # a health view's read of the buckets
# Agents' health (shared/src/adapters/aws/health.rs): one query reads the
# state and the buckets; the breaker's changes and a provider's wait are
# conditional updates. A result's counts ride in the task store's write.
HEALTH_ACTIONS = {"read": {(QUERY, CONTEXT)}, "change": {(UPDATE, CONTEXT)},
                  "cool_down": {(UPDATE, CONTEXT)}}
# A turn of a rotation counter (round_robin, weighted routing): one `ADD`
# (shared/src/adapters/aws/rotation.rs).
ROTATION_ACTIONS = {"next": {(UPDATE, CONTEXT)}}
# The cache reads a tenant's and the platform's agents, and the tenant's settings.
_USABLE = {(QUERY, REGISTRY), (GET, REGISTRY)}
AGENTS_CACHE_ACTIONS = {"usable": _USABLE, "find": _USABLE, "owned": {(QUERY, REGISTRY)},
                        "settings": {(GET, REGISTRY)}, "filters": {(GET, REGISTRY)},
                        "defaults": set(),
                        "invalidate": set(), "invalidate_settings": set()}

# The code each function runs (file, or file::function).
CODE_OF = {
    "IntakeRole": ["shared/src/stages/intake.rs", "shared/src/stages/mod.rs",
                   "shared/src/stages/agents.rs", "shared/src/api/agents.rs",
                   "shared/src/api/tenants.rs", "shared/src/api/tasks.rs",
                   "shared/src/api/audit.rs", "shared/src/api/auth/mod.rs",
                   "shared/src/stages/audit.rs", "shared/src/stages/limits.rs",
                   "shared/src/stages/health.rs"],
    "RouteRole": ["shared/src/stages/route.rs", "shared/src/stages/dead_letter.rs",
                  "shared/src/stages/mod.rs", "shared/src/stages/limits.rs::admit_call",
                  "shared/src/stages/limits.rs::take",
                  "shared/src/stages/limits.rs::give_back_call", "shared/src/stages/health.rs"],
    "AgentCallRole": ["shared/src/stages/agent_call.rs", "shared/src/stages/aggregate.rs",
                      "shared/src/stages/dead_letter.rs", "shared/src/stages/mod.rs",
                      "shared/src/stages/health.rs"],
    "AggregateRole": ["shared/src/stages/aggregate.rs", "shared/src/stages/dead_letter.rs",
                      "shared/src/stages/mod.rs"],
    "EventsRole": ["shared/src/stages/inbox.rs", "shared/src/stages/intake.rs::submit",
                   "shared/src/stages/intake.rs::admit_and_create",
                   "shared/src/stages/intake.rs::filter_input", "shared/src/stages/limits.rs",
                   "shared/src/stages/audit.rs::record_refusal"],
    "SweeperRole": ["shared/src/stages/sweeper.rs", "shared/src/stages/mod.rs"],
    "AnnouncerRole": ["shared/src/stages/announce.rs"],
}


def store_calls(spec: str) -> set[tuple[str, str]]:
    path, _, fn = spec.partition("::")
    text = rust(path).split("#[cfg(test)]")[0]
    if fn:
        m = re.search(rf"^(?:pub(?:\(crate\))? )?async fn {fn}\b.*?^}}", text, re.M | re.S)
        assert m, f"{fn} not found in {path}"
        text = m.group(0)
    compact = re.sub(r"\s+", "", text)
    calls = {("tasks", m) for m in re.findall(r"\btasks\.([a-z_]+)\(", compact)}
    calls |= {("registry", m) for m in re.findall(r"\bregistry\.([a-z_]+)\(", compact)}
    calls |= {("agents", m) for m in re.findall(r"\.agents\.([a-z_]+)\(", compact)}
    calls |= {("audit", m) for m in re.findall(r"\.audit\.([a-z_]+)\(", compact)}
    calls |= {("limiter", m) for m in re.findall(r"\.limiter\.([a-z_]+)\(", compact)}
    calls |= {("health", m) for m in re.findall(r"\.health\.([a-z_]+)\(", compact)}
    calls |= {("rotation", m) for m in re.findall(r"\.rotation\.([a-z_]+)\(", compact)}
    if "AuditEntry::" in compact:
        calls.add(("audit", "entry"))
    return calls


def test_roles_cover_the_store_calls_their_code_makes():
    """When a stage starts calling another store method, its role must grow."""
    tables = {"tasks": TASK_STORE_ACTIONS, "registry": REGISTRY_ACTIONS,
              "agents": AGENTS_CACHE_ACTIONS, "audit": AUDIT_ACTIONS,
              "limiter": LIMITER_ACTIONS, "health": HEALTH_ACTIONS,
              "rotation": ROTATION_ACTIONS}
    for role, files in CODE_OF.items():
        needed = set()
        for spec in files:
            for store, method in store_calls(spec):
                if method == "clone":  # the Arc, not the store
                    continue
                assert method in tables[store], (
                    f"{spec} calls {store}.{method}: add its DynamoDB actions to this test "
                    "and to the template's roles")
                needed |= tables[store][method]
        missing = needed - EXPECTED_ALLOW[role]
        assert not missing, f"{role} lacks {sorted(missing)} that its code needs"
        # The stream's actions are the trigger's, not the code's.
        granted = {(a, r) for a, r in EXPECTED_ALLOW[role]
                   if a.startswith("dynamodb:") and not r.endswith("/stream/*)")}
        unused = granted - needed
        assert not unused, f"{role} grants {sorted(unused)} that its code does not use"


def test_secrets_have_no_value_in_the_template():
    secrets = resources("AWS::SecretsManager::Secret")
    assert set(secrets) == {"JwtSecret"}
    props = secrets["JwtSecret"]["Properties"]
    assert props["Name"] == {"Fn::Sub": "${Prefix}/jwt"}
    assert "SecretString" not in props and props["GenerateSecretString"]["PasswordLength"] >= 32
    assert not re.search(r"^\s*SecretString\s*:", TEMPLATE.read_text(), re.M)
    assert PARAMS["ProviderSecretPrefix"]["Default"] == "maof/"
    # The registry seed names its provider secrets under the same prefix.
    seed = (ROOT / "infra/agents.yaml").read_text()
    for secret in re.findall(r"secret:\s*(\S+)", seed):
        assert secret.startswith("maof/"), secret


def test_alarms_on_dlq_depth_function_errors_and_throttles():
    alarms = list(resources("AWS::CloudWatch::Alarm").values())

    def has(namespace, metric, dim_name, target):
        return any(
            a["Properties"]["Namespace"] == namespace
            and a["Properties"]["MetricName"] == metric
            and any(d["Name"] == dim_name and ref_target(d["Value"]) == target
                    for d in a["Properties"]["Dimensions"])
            and a["Properties"]["ComparisonOperator"] == "GreaterThanThreshold"
            and a["Properties"]["Threshold"] == 0
            for a in alarms
        )

    for dlq in [*WORK_QUEUES.values(), "AnnounceFailures"]:
        assert has("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", dlq), dlq
    for fn in FUNCTIONS:
        assert has("AWS/Lambda", "Errors", "FunctionName", fn), fn
        assert has("AWS/Lambda", "Throttles", "FunctionName", fn), fn
    for a in alarms:
        assert a["Properties"]["AlarmActions"]["Fn::If"][0] == "HasAlarmAction"


def test_http_api_throttled_logged_no_cors_optional_jwt_authorizer():
    apis = resources("AWS::Serverless::HttpApi")
    assert set(apis) == {"HttpApi"}
    props = apis["HttpApi"]["Properties"]
    assert props["DefaultRouteSettings"]["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurst"}
    assert props["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRate"}
    assert "ApiAccessLogs" in props["AccessLogSettings"]["DestinationArn"]["Fn::Sub"]
    assert "$context.requestId" in props["AccessLogSettings"]["Format"]
    assert "CorsConfiguration" not in props
    body = props["DefinitionBody"]
    integration = "functions/${Intake.Arn}/invocations"
    for path, item in body["paths"].items():
        for op in item.values():
            assert integration in op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"], path
    assert "security" not in body["paths"]["/health"]["get"]
    assert "security" not in body["paths"]["/openapi.json"]["get"]
    default = body["paths"]["/$default"]["x-amazon-apigateway-any-method"]
    assert default["isDefaultRoute"] is True
    assert default["security"]["Fn::If"][0] == "HasJwtAuthorizer"
    assert default["security"]["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    components = body["components"]["Fn::If"]
    assert components[0] == "HasJwtAuthorizer"
    authorizer = components[1]["securitySchemes"]["MaofJwt"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "jwt"
    assert authorizer["jwtConfiguration"]["issuer"] == {"Ref": "JwtIssuer"}
    assert T["Conditions"]["HasJwtAuthorizer"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtIssuer"}, ""]}]}
    perm = RES["IntakeApiPermission"]["Properties"]
    assert perm["Principal"] == "apigateway.amazonaws.com"
    assert perm["FunctionName"] == {"Ref": "Intake"}
    assert perm["SourceArn"]["Fn::Sub"].endswith(":${HttpApi}/*")


def test_event_bus_rule_delivers_task_requests_to_the_inbox():
    assert RES["EventBus"]["Properties"]["Name"] == {"Fn::Sub": "${Prefix}-bus"}
    rule = RES["TaskRequestedRule"]["Properties"]
    assert rule["EventBusName"] == {"Ref": "EventBus"}
    inbox_src = ROOT / "shared/src/stages/inbox.rs"
    requested = "maof.task.requested"
    if inbox_src.exists():
        assert f'pub const REQUESTED: &str = "{requested}";' in inbox_src.read_text()
    assert rule["EventPattern"]["detail-type"] == [requested]
    (target,) = rule["Targets"]
    assert ref_target(target["Arn"]) == "InboxQueue"
    assert ref_target(target["DeadLetterConfig"]["Arn"]) == "InboxDlq"
    policy = RES["InboxQueuesPolicy"]["Properties"]
    assert {ref_target(q) for q in policy["Queues"]} == {"InboxQueue", "InboxDlq"}
    (allow,) = policy["PolicyDocument"]["Statement"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["TaskRequestedRule", "Arn"]}}}


def test_the_sweeper_runs_every_minute_on_a_schedule():
    events = function("Sweeper")["Events"]
    assert list(events.values()) == [{
        "Type": "Schedule",
        "Properties": {"Schedule": "rate(1 minute)",
                       "RetryPolicy": {"MaximumRetryAttempts": 0}},
    }]
    assert "fn sweep" in rust("shared/src/stages/sweeper.rs")
    assert "stages::sweeper::sweep" in rust("functions/sweeper/src/main.rs")


def test_outputs():
    outputs = T["Outputs"]
    for name in ("ApiUrl", "ContextTableName", "RegistryTableName", "RouteQueueUrl",
                 "AgentCallQueueUrl", "AggregateQueueUrl", "RouteDlqUrl", "AgentCallDlqUrl",
                 "AggregateDlqUrl", "InboxQueueUrl", "EventBusName"):
        assert name in outputs, name
    assert "${HttpApi}.execute-api" in outputs["ApiUrl"]["Value"]["Fn::Sub"]


def test_sam_transform_adds_no_permissions_of_its_own():
    """SAM would attach AWS-managed policies (with `Resource: *`) to roles it
    generates; with a role per function it must generate none."""
    try:
        from samtranslator.translator.transform import transform
    except ImportError as e:  # a missing tool is a failure, not a skip
        raise AssertionError(
            "samtranslator is missing: run infra/scripts/check-template.sh, which installs aws-sam-cli"
        ) from e
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = json.loads(json.dumps(T))
    template["Globals"]["Function"]["CodeUri"] = "s3://bucket/key"  # as `sam package` leaves it

    class NoManagedPolicies:
        def load(self):
            return {}

    out = transform(template, {}, NoManagedPolicies())["Resources"]
    roles = {k for k, v in out.items() if v["Type"] == "AWS::IAM::Role"}
    assert roles == set(EXPECTED_ALLOW), roles
    for role in roles:
        assert out[role] == RES[role], f"SAM changed {role}"
    assert not [k for k, v in out.items() if v["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")]
    mappings = [v["Properties"] for v in out.values() if v["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 8  # 7 queues, and the announcer's stream
    stream = [m for m in mappings if m["EventSourceArn"] == {"Fn::GetAtt": ["ContextTable", "StreamArn"]}]
    assert len(stream) == 1 and "FilterCriteria" in stream[0] and "DestinationConfig" in stream[0]
    for m in mappings:
        assert m["FunctionResponseTypes"] == ["ReportBatchItemFailures"], m
    api = out["HttpApi"]["Properties"]
    assert "/$default" in api["Body"]["paths"] and api["FailOnWarnings"] is True


def test_finished_tasks_are_announced_from_the_context_tables_stream():
    """The announcer's trigger passes exactly the changes `TaskStatus::finishes`
    announces: a task item (sort key TASK) whose status became terminal."""
    table = RES["ContextTable"]["Properties"]
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    events = RES["Announcer"]["Properties"]["Events"]
    assert list(events) == ["TaskStream"]
    trigger = events["TaskStream"]
    assert trigger["Type"] == "DynamoDB"
    props = trigger["Properties"]
    assert props["Stream"] == {"Fn::GetAtt": ["ContextTable", "StreamArn"]}
    assert props["StartingPosition"] == "TRIM_HORIZON"
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BisectBatchOnFunctionError"] is True
    assert props["ParallelizationFactor"] == 1  # each task's changes in order
    # Retried until the record is nearly as old as the stream keeps it.
    assert props["MaximumRetryAttempts"] == -1
    assert 3600 <= props["MaximumRecordAgeInSeconds"] < 24 * 3600
    assert props["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS", "Destination": {"Fn::GetAtt": ["AnnounceFailures", "Arn"]}}
    failures = RES["AnnounceFailures"]["Properties"]
    assert failures["MessageRetentionPeriod"] == 14 * 24 * 3600
    [flt] = props["FilterCriteria"]["Filters"]
    pattern = json.loads(flt["Pattern"])
    task_rs = rust("shared/src/domain/task.rs")
    terminal = re.search(r"fn is_terminal\(self\) -> bool \{.*?matches!\(\s*self,(.*?)\)",
                         task_rs, re.S).group(1)
    terminal = sorted(re.sub(r"(?<!^)([A-Z])", r"_\1", v).lower()
                      for v in re.findall(r"TaskStatus::(\w+)", terminal))
    assert terminal == ["cancelled", "completed", "failed"], terminal
    keys = code_key_constants()
    assert pattern == {
        "eventName": ["MODIFY"],
        "dynamodb": {
            "NewImage": {keys["SK"]: {"S": [keys["TASK_SK"]]},
                         "status": {"S": sorted(terminal, key=["completed", "failed", "cancelled"].index)}},
            "OldImage": {"status": {"S": [{"anything-but": sorted(
                terminal, key=["completed", "failed", "cancelled"].index)}]}},
        },
    }


# ------------------------------------------------------------------ runner


def main() -> int:
    tests = [(n, f) for n, f in sorted(globals().items(), key=lambda kv: kv[0])
             if n.startswith("test_") and callable(f)]
    failed = 0
    for name, test in tests:
        try:
            test()
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            print(f"ok   {name}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
