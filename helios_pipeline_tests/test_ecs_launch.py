"""The ECS deployment at the API level: deploy/ecs/dagster.yaml's EcsRunLauncher launching chunk runs.

Containers cannot run here, so AWS is moto's in-process ECS/EC2 API (no network at all). Everything on
the Dagster side is real: the instance is built from the example config (SQLite instead of Postgres),
the task definition is registered from deploy/ecs/task-definition.json, the code location is the
project's, and runs go through ``DagsterInstance.launch_run``. The assertions read what moto recorded.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceRequestContext
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from moto import mock_aws

from helios_pipeline.dagster_defs.run_tags import worker_run_tags
from helios_pipeline.spec import RenderSpec, SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "ecs"
REGION = "us-east-1"
CLUSTER = "helios-test"
ACCOUNT = "123456789012"  # moto's default account
TASK_ENV = {
    "AWS_ACCOUNT_ID": ACCOUNT,
    "AWS_REGION": REGION,
    "HELIOS_ECS_EXECUTION_ROLE": "helios-execution",
    "HELIOS_ECS_TASK_ROLE": "helios-task",
    "HELIOS_IMAGE": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/helios-pipeline:test",
    "HELIOS_STORAGE": "s3://helios-renders/prod",
    "HELIOS_MAX_CHUNKS": "128",
    "DAGSTER_PG_HOST": "db.internal",
    "HELIOS_ECS_CLUSTER": CLUSTER,
    "HELIOS_LOG_BUCKET": "helios-logs",
    "DAGSTER_PG_PASSWORD_SECRET_ARN": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:dagster-pg",
}


@dataclass
class Aws:
    ecs: Any
    task_definition_arn: str
    subnet: str
    security_group: str


@dataclass
class Deployment:
    aws: Aws
    instance: dg.DagsterInstance
    workspace: WorkspaceRequestContext


def registered_task_definition(ecs: Any) -> str:
    """Register deploy/ecs/task-definition.json the README's way (placeholders substituted from the env)."""
    template = string.Template((DEPLOY / "task-definition.json").read_text())
    body = json.loads(template.substitute(TASK_ENV))  # KeyError if the file gains a placeholder we do not set
    return ecs.register_task_definition(**body)["taskDefinition"]["taskDefinitionArn"]


def instance_config(aws: Aws) -> dict[str, Any]:
    """deploy/ecs/dagster.yaml with moto's network ids for the EDIT lines, and SQLite for Postgres."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    del config["storage"]  # the Postgres deployment is another test's job: DAGSTER_HOME's SQLite here
    network = config["run_launcher"]["config"]["run_task_kwargs"]["networkConfiguration"]["awsvpcConfiguration"]
    assert network["subnets"] == ["subnet-EDIT-ME"] and network["securityGroups"] == ["sg-EDIT-ME"]
    network.update(subnets=[aws.subnet], securityGroups=[aws.security_group])
    return config


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """moto's ECS and EC2 with the cluster, VPC, subnet and security group a Fargate task needs."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECS", "AWS_ENDPOINT_URL_EC2", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        # as the README asks (ECR and S3 endpoints need it); moto's awsvpc tasks need it too
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="helios-runs", Description="helios run tasks", VpcId=vpc)
        ecs = boto3.client("ecs", region_name=REGION)
        ecs.create_cluster(clusterName=CLUSTER)
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=TASK_ENV["HELIOS_LOG_BUCKET"])
        yield Aws(ecs, registered_task_definition(ecs), subnet, group["GroupId"])


@pytest.fixture
def deployment(aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """A Dagster instance from the example config, and the project's code location loaded in this process."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(aws)))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HELIOS_ECS_TASK_DEFINITION", "helios-pipeline")  # the family: the launcher resolves it
    monkeypatch.setenv("HELIOS_ECS_CLUSTER", CLUSTER)
    monkeypatch.setenv("HELIOS_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("HELIOS_LOG_BUCKET", TASK_ENV["HELIOS_LOG_BUCKET"])
    origin = LoadableTargetOrigin(
        module_name="helios_pipeline.dagster_defs.definitions", attribute="defs", working_directory=str(REPO)
    )
    with dg.DagsterInstance.get() as instance, in_process_test_workspace(instance, origin) as workspace:
        yield Deployment(aws, instance, workspace)


def write_spec(tmp_path: Path, name: str, width: int, height: int, **fields: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "composition": "https://example.com/c.html", "width": width, "height": height}
    path.write_text(yaml.safe_dump({**spec, "fps": 30, "frame_count": 120, **fields}))
    return path


def create_chunk_run(deployment: Deployment, spec: RenderSpec, chunk: str, tags: dict[str, str]) -> dg.DagsterRun:
    """A `chunk_video` run of one render × chunk partition, shaped like the ones a backfill creates."""
    instance, workspace = deployment.instance, deployment.workspace
    instance.add_dynamic_partitions("renders", [spec.name])
    (location,) = workspace.code_locations
    (repository,) = location.get_repositories().values()
    remote_job = repository.get_full_job("__ASSET_JOB")
    from helios_pipeline.dagster_defs.definitions import defs

    partition = dg.MultiPartitionKey({"render": spec.name, "chunk": chunk})
    return instance.create_run_for_job(
        job_def=defs.resolve_implicit_global_asset_job_def(),
        asset_selection={dg.AssetKey("chunk_video")},
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        tags={
            "dagster/partition": str(partition),
            "dagster/partition/render": spec.name,
            "dagster/partition/chunk": chunk,
            "helios/render": spec.name,
            **tags,
        },
    )


def launched_task(deployment: Deployment, run: dg.DagsterRun) -> dict[str, Any]:
    """Launch ``run`` through the instance and return the one ECS task moto recorded for it."""
    deployment.instance.launch_run(run.run_id, deployment.workspace)
    ecs = deployment.aws.ecs
    arns = ecs.list_tasks(cluster=CLUSTER)["taskArns"]
    run_tags = deployment.instance.get_run_by_id(run.run_id).tags
    assert run_tags["ecs/task_arn"] in arns, (run_tags, arns)  # the launcher recorded which task is the run's
    (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=[run_tags["ecs/task_arn"]], include=["TAGS"])["tasks"]
    return task


def execute_run_args(task: dict[str, Any]) -> ExecuteRunArgs:
    """The ``dagster api execute_run <args>`` command of the task's container override, deserialised."""
    (container,) = task["overrides"]["containerOverrides"]
    assert container["name"] == "helios"
    command = container["command"]
    assert command[:3] == ["dagster", "api", "execute_run"], command
    return deserialize_value(command[3], ExecuteRunArgs)


def test_a_chunk_run_is_launched_as_one_fargate_task_sized_by_its_spec(deployment: Deployment, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "promo", 1920, 1080))
    run = create_chunk_run(deployment, spec, "002", worker_run_tags(spec))
    assert type(deployment.instance.run_launcher).__name__ == "EcsRunLauncher"

    task = launched_task(deployment, run)

    # the task runs the registered definition (the launcher registered no other) in the example's network
    assert task["taskDefinitionArn"] == deployment.aws.task_definition_arn
    families = deployment.aws.ecs.list_task_definitions()["taskDefinitionArns"]
    assert families == [deployment.aws.task_definition_arn]
    definition = deployment.aws.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    assert definition["taskDefinition"]["containerDefinitions"][0]["image"] == TASK_ENV["HELIOS_IMAGE"]
    assert task["launchType"] == "FARGATE"
    assert task["attachments"][0]["details"][0] == {"name": "subnetId", "value": deployment.aws.subnet}

    # RunTask carried the run's command: this run, of the project's code location
    args = execute_run_args(task)
    assert args.run_id == run.run_id
    assert args.job_origin.job_name == "__ASSET_JOB"
    assert args.job_origin.repository_origin.code_pointer.module == "helios_pipeline.dagster_defs.definitions"
    # ECS refuses overrides over 8192 characters, and the command carries the whole instance config
    # (here without the Postgres section's ~400); a config that outgrows this fails every launch
    assert len(json.dumps(task["overrides"], separators=(",", ":"))) < 7000

    # ...and the spec's size (1080p: 2 vCPU, 4 GiB) as task and container overrides
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("2048", "4096")
    (container,) = task["overrides"]["containerOverrides"]
    assert (container["cpu"], container["memory"]) == (2048, 4096)
    ecs_tags = {tag["key"]: tag["value"] for tag in task["tags"]}
    assert ecs_tags["dagster/run_id"] == run.run_id
    assert (ecs_tags["helios/render"], ecs_tags["dagster/partition/chunk"]) == ("promo", "002")  # propagate_tags

    # the instance shows the run as launched into that task
    stored = deployment.instance.get_run_by_id(run.run_id)
    assert stored.status == dg.DagsterRunStatus.STARTING
    assert stored.tags["ecs/cluster"].endswith(f":cluster/{CLUSTER}")


def test_a_different_resolution_gets_different_overrides(deployment: Deployment, tmp_path: Path) -> None:
    sizes = {}
    for name, (width, height) in {"small": (1280, 720), "big": (3840, 2160)}.items():
        spec = load_spec(write_spec(tmp_path, name, width, height))
        task = launched_task(deployment, create_chunk_run(deployment, spec, "000", worker_run_tags(spec)))
        (container,) = task["overrides"]["containerOverrides"]
        sizes[name] = (task["overrides"]["cpu"], task["overrides"]["memory"], container["cpu"], container["memory"])
    assert sizes == {"small": ("1024", "2048", 1024, 2048), "big": ("4096", "8192", 4096, 8192)}


def test_the_spec_worker_field_sizes_the_task(deployment: Deployment, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "heavy", 1280, 720, worker={"cpu": 8192, "memory": 32768}))
    task = launched_task(deployment, create_chunk_run(deployment, spec, "001", worker_run_tags(spec)))
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("8192", "32768")


def test_a_run_without_size_tags_gets_the_configs_run_resources(deployment: Deployment, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "untagged", 640, 360))
    task = launched_task(deployment, create_chunk_run(deployment, spec, "000", {}))
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("2048", "4096")  # run_resources, not 256/512


def test_run_monitoring_checks_the_task_and_terminate_stops_only_that_task(
    deployment: Deployment, tmp_path: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, "watched", 1280, 720))
    launcher = deployment.instance.run_launcher
    runs = [create_chunk_run(deployment, spec, chunk, worker_run_tags(spec)) for chunk in ("000", "001")]
    tasks = [launched_task(deployment, run) for run in runs]
    kept, canceled = (deployment.instance.get_run_by_id(run.run_id) for run in runs)
    # what the monitoring daemon asks every poll_interval_seconds: the run's own task, by its recorded ARN
    assert launcher.check_run_worker_health(kept).status.name == "RUNNING"

    # terminating a run (UI, CLI Ctrl-C) stops its task, and leaves the sibling chunk's task running
    assert launcher.terminate(canceled.run_id)
    described = deployment.aws.ecs.describe_tasks(cluster=CLUSTER, tasks=[task["taskArn"] for task in tasks])
    desired = {task["taskArn"]: task["desiredStatus"] for task in described["tasks"]}
    assert desired == {tasks[0]["taskArn"]: "RUNNING", tasks[1]["taskArn"]: "STOPPED"}
    assert deployment.instance.get_run_by_id(canceled.run_id).status == dg.DagsterRunStatus.CANCELING


def test_a_bad_worker_size_is_refused_before_anything_is_launched(aws: Aws, tmp_path: Path) -> None:
    path = write_spec(tmp_path, "bad", 1920, 1080, worker={"cpu": 2048, "memory": 2048})
    with pytest.raises(SpecError, match=r"worker\.memory: 2048 MiB is not a Fargate size for 2048 CPU units"):
        worker_run_tags(load_spec(path))
    assert aws.ecs.list_tasks(cluster=CLUSTER)["taskArns"] == []
