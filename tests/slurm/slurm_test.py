#!/usr/bin/python3
"""SlurmTest.BatchWorkersTrainAndScancelRequeues.

A real single-node Slurm on loopback (Debian's slurm-wlm: munged, slurmctld
and slurmd, started here with a private key, config and spool folder), a
real lathed over mutual TLS, and deploy/slurm/lathe-workers.sbatch submitted
with sbatch:

  1. the first allocation's worker joins lathed and trains the job until it
     has uploaded a checkpoint;
  2. scancel of that allocation: the worker gets SIGTERM from Slurm, hands
     the job back and lathed requeues it (no worker is left);
  3. a second allocation's worker takes attempt 2, resumes from the
     checkpoint the first one left (step > 0) and trains to success.

Exit 77 (skipped) only when slurmctld is not installed
(scripts/install-deps.sh installs it). Every process started here is
stopped at the end, passed or failed; on failure the Slurm, munge, lathed
and worker logs are printed. LATHE_KEEP_TEST_DIR=1 keeps the folder.

Environment: LATHE_LATHED_BIN, LATHE_WORKER_BIN, LATHE_CLI_BIN (set by
CTest), LATHE_SOURCE_DIR (default: this file's repository).
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77
# Below CTest's TIMEOUT (600 s), so a slow run still cleans up after itself.
BUDGET_S = float(os.environ.get("LATHE_SLURM_TEST_BUDGET_S", "540"))
START = time.monotonic()
# Slurm's grace between SIGTERM and SIGKILL on scancel; the worker's drain
# (checkpoint, upload, hand back) takes up to 60 s.
KILL_WAIT_S = 90
STEPS_PER_EPOCH = 80  # the demo's train.jsonl at batch 1
# 3,200 steps (80 lines at batch 1): still training when the scancel lands,
# on any machine (400 once left a fast one half a second).
EPOCHS = 40
CHECKPOINT_EVERY = 50


def log(msg):
    print(f"slurm_test [{time.monotonic() - START:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


class Fatal(Failure):
    """Raised inside a wait: no point waiting on."""


def sbin(name):
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
    return shutil.which(name, path=path)


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path, lines=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})\n"


class SlurmTest:
    def __init__(self):
        src = os.environ.get("LATHE_SOURCE_DIR") or os.path.abspath(
            os.path.join(os.path.dirname(__file__), "..", ".."))
        self.sbatch_script = os.path.join(src, "deploy", "slurm",
                                          "lathe-workers.sbatch")
        self.make_certs = os.path.join(src, "scripts", "make-certs.sh")
        self.lathed_bin = os.environ.get("LATHE_LATHED_BIN", "lathed")
        self.worker_bin = os.environ.get("LATHE_WORKER_BIN", "lathe-worker")
        self.cli_bin = os.environ.get("LATHE_CLI_BIN", "lathe")
        base = os.environ.get("TMPDIR") or "/tmp"
        self.root = tempfile.mkdtemp(prefix="lathe-slurm-", dir=base)
        # munged wants every folder above its socket searchable by all.
        os.chmod(self.root, 0o711)
        os.makedirs(self.path("log"))
        self.conf = os.path.join(self.root, "etc", "slurm.conf")
        self.finishing = False
        self.procs = []  # (name, Popen), in start order
        self.allocations = []  # Slurm job ids submitted
        # The environment of every Slurm command and daemon: this test's
        # config, nothing of a Slurm job this test may itself run in.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SRUN_",
                                         "SALLOC_", "LATHE_"))}
        self.env["SLURM_CONF"] = self.conf
        self.env["PATH"] = self.env.get("PATH", "") + ":/usr/sbin:/sbin"

    # -- helpers ---------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def remaining(self):
        if self.finishing:  # dumps and clean-up: their own short timeouts
            return 60
        return BUDGET_S - (time.monotonic() - START)

    def run(self, argv, timeout=60, check=True, env=None):
        timeout = max(1, min(timeout, self.remaining()))
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               timeout=timeout, env=env or self.env)
        except subprocess.TimeoutExpired:
            raise Failure(f"{argv[0]} timed out after {timeout:.0f}s: "
                          f"{' '.join(argv)}")
        if check and p.returncode != 0:
            raise Failure(f"{' '.join(argv)} exited {p.returncode}:\n"
                          f"{p.stdout}{p.stderr}")
        return p.stdout

    def start(self, name, argv, env=None):
        logf = open(self.path("log", name + ".out"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, env=env or self.env,
                             start_new_session=True, cwd=self.root)
        logf.close()
        self.procs.append((name, p))
        log(f"started {name} (pid {p.pid})")
        return p

    def wait_for(self, what, fn, timeout, interval=0.5):
        """Polls fn until it returns a true value; Failure after timeout."""
        deadline = time.monotonic() + min(timeout, self.remaining())
        last = None
        while True:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise Failure(f"{name} exited ({p.returncode}) while "
                                  f"waiting for {what}")
            try:
                value = fn()
                if value:
                    return value
            except Fatal:
                raise
            except Failure as e:
                last = e
            if time.monotonic() > deadline:
                raise Failure(f"timed out after {timeout:.0f}s waiting for "
                              f"{what}" + (f" (last: {last})" if last else ""))
            time.sleep(interval)

    def cli(self, *args, key=None):
        argv = [self.cli_bin, "--server", f"127.0.0.1:{self.port}",
                "--ca_cert", self.path("certs", "ca.pem"),
                "--api_key", key or self.user_key, *args]
        return self.run(argv, timeout=60)

    def cli_json(self, *args, key=None):
        out = self.cli(*args, "-o", "json", key=key)
        return json.loads(out[out.index("{"):])

    def job(self):
        return self.cli_json("jobs", "get", self.job_id)

    def events(self):
        out, after = [], None
        while True:
            args = ["jobs", "events", self.job_id, "--limit", "500"]
            if after:
                args += ["--after", after]
            page = self.cli_json(*args).get("data", [])
            out += page
            if len(page) < 500:
                return out
            after = page[-1]["id"]

    def messages(self):
        return [e["message"] for e in self.events()
                if e.get("type") != "metrics" and "message" in e]

    def slurm_state(self, job_id):
        """squeue's state, else scontrol's (a finished job), else '' (a job
        Slurm no longer knows); Failure when Slurm does not answer."""
        out = self.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                       check=False, timeout=20).strip()
        if out and re.fullmatch(r"[A-Z_]+", out):
            return out
        p = subprocess.run(["scontrol", "show", "job", str(job_id)],
                           capture_output=True, text=True, env=self.env,
                           timeout=20)
        m = re.search(r"JobState=(\S+)", p.stdout)
        if m:
            return m.group(1)
        if "Invalid job id" in p.stdout + p.stderr:
            return ""
        raise Failure(f"no state for Slurm job {job_id}: {out} {p.stdout}"
                      f"{p.stderr}")

    # -- the cluster -----------------------------------------------------

    def start_munge(self):
        key_dir = self.path("munge-key")
        sock_dir = self.path("munge")
        os.makedirs(key_dir, mode=0o700)
        os.makedirs(sock_dir)
        os.chmod(sock_dir, 0o755)
        key = os.path.join(key_dir, "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.write(fd, os.urandom(1024))
        os.close(fd)
        self.munge_socket = os.path.join(sock_dir, "munge.socket")
        self.start("munged", [
            sbin("munged"), "--foreground", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--log-file={self.path('log', 'munged.log')}",
            f"--pid-file={self.path('munge', 'munged.pid')}",
            f"--seed-file={self.path('munge', 'munged.seed')}"])

        def works():
            if not os.path.exists(self.munge_socket):
                return False
            cred = self.run([sbin("munge"), "-S", self.munge_socket, "-n"],
                            check=False)
            p = subprocess.run([sbin("unmunge"), "-S", self.munge_socket],
                               input=cred, capture_output=True, text=True,
                               env=self.env, timeout=10)
            return p.returncode == 0
        self.wait_for("munged to encode and decode a credential", works, 30)
        log("munged is up")

    def write_slurm_conf(self):
        for d in ("etc", "state", "spool/slurmd", "scratch", "alloc"):
            os.makedirs(self.path(d), exist_ok=True)
        # One node, localhost at 127.0.0.1, with at least 4 CPUs whatever
        # this machine has (config_overrides: slurmd takes the config's
        # word), so the 3-task allocation below fits on a small machine.
        node = (f"NodeName=localhost NodeAddr=127.0.0.1 "
                f"CPUs={max(4, os.cpu_count() or 1)}")
        self.ctld_port, self.slurmd_port = free_ports(2)
        plugstack = self.path("etc", "plugstack.conf")
        open(plugstack, "w").close()
        conf = f"""# Written by tests/slurm/slurm_test.py.
ClusterName=lathetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool', 'slurmd')}
SlurmctldPidFile={self.path('state', 'slurmctld.pid')}
SlurmdPidFile={self.path('spool', 'slurmd.pid')}
SlurmctldLogFile={self.path('log', 'slurmctld.log')}
SlurmdLogFile={self.path('log', 'slurmd.log')}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={plugstack}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait={KILL_WAIT_S}
MinJobAge=600
{node} State=UNKNOWN
PartitionName=lathe Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)
        log(f"slurm.conf: ports {self.ctld_port}/{self.slurmd_port}, {node}")

    def start_slurm(self):
        self.start("slurmctld", [sbin("slurmctld"), "-D", "-f", self.conf])
        self.start("slurmd", [sbin("slurmd"), "-D", "-N", "localhost",
                              "-f", self.conf])

        def idle():
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
            return "localhost idle" in out
        self.wait_for("sinfo to show node localhost idle", idle, 90, 1)
        log("slurm is up: " +
            self.run(["sinfo", "-h", "-N", "-o", "%N %T %c"]).strip())

    def start_lathed(self):
        self.run([self.worker_bin, "make-demo", "--out", self.path("demo")])
        self.run(["bash", self.make_certs, self.path("certs")])
        port_file = self.path("lathed.port")
        self.start("lathed", [
            self.lathed_bin, "--listen=127.0.0.1:0", "--worker_listen=127.0.0.1:0",
            f"--tls_cert={self.path('certs', 'server.pem')}",
            f"--tls_key={self.path('certs', 'server.key')}",
            f"--worker_client_ca={self.path('certs', 'ca.pem')}",
            f"--data_dir={self.path('data')}",
            f"--base_model=lathe-demo={self.path('demo', 'model')}",
            "--base_learning_rate=2e-3", "--lease_seconds=5",
            f"--port_file={port_file}"])
        self.wait_for("lathed's port file",
                      lambda: os.path.exists(port_file)
                      and os.path.exists(port_file + ".worker"), 30)
        self.port = int(open(port_file).read())
        self.worker_port = int(open(port_file + ".worker").read())
        admin = open(self.path("data", "admin.key")).read().strip()
        self.user_key = "unset"
        self.user_key = self.cli_json("admin", "keys", "create", "--project",
                                      "slurm", key=admin)["secret"]
        # The worker's credentials as an operator would hand them out.
        creds = self.path("creds")
        os.makedirs(creds, mode=0o700)
        for src in (self.path("data", "worker.token"),
                    self.path("certs", "ca.pem"),
                    self.path("certs", "worker.pem"),
                    self.path("certs", "worker.key")):
            shutil.copy(src, creds)
        log(f"lathed is up: users on {self.port}, workers on "
            f"{self.worker_port} (mutual TLS)")

    def create_job(self):
        f = self.cli_json("files", "upload", self.path("demo", "train.jsonl"))
        job = self.cli_json(
            "jobs", "create", "--model", "lathe-demo", "--training-file",
            f["id"], "--n-epochs", str(EPOCHS), "--batch-size", "1",
            "--checkpoint-every-steps", str(CHECKPOINT_EVERY))
        self.job_id = job["id"]
        log(f"created {self.job_id} ({EPOCHS} epochs of {f['line_count']} "
            f"lines at batch 1, a checkpoint every {CHECKPOINT_EVERY} steps)")

    def submit(self, ntasks=1, extra_env=None, wait_running=True):
        env = dict(self.env)
        env.update({
            "LATHE_WORKER_SERVER": f"127.0.0.1:{self.worker_port}",
            "LATHE_WORKER_BIN": self.worker_bin,
            "LATHE_CREDENTIALS": self.path("creds"),
            "LATHE_SCRATCH": self.path("scratch"),
            "LATHE_DEVICE": "cpu",
        })
        env.update(extra_env or {})
        env = {k: v for k, v in env.items() if v is not None}
        out = self.run(["sbatch", "--parsable", "--nodes=1",
                        f"--ntasks-per-node={ntasks}",
                        "--cpus-per-task=1", "--time=15",
                        "--job-name=lathe-workers-test",
                        f"--chdir={self.path('alloc')}",
                        f"--output={self.path('alloc', 'slurm-%j.out')}",
                        self.sbatch_script], env=env)
        job_id = out.strip().split(";")[0]
        self.allocations.append(job_id)
        log(f"submitted allocation {job_id} ({ntasks} task(s))")
        if not wait_running:
            return job_id

        def running():
            state = self.slurm_state(job_id)
            if state in ("FAILED", "CANCELLED", "COMPLETED", "TIMEOUT",
                         "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"):
                raise Fatal(f"allocation {job_id} ended: {state}")
            return state == "RUNNING"
        self.wait_for(f"allocation {job_id} to run", running, 90, 1)
        log(f"allocation {job_id} is running")
        return job_id

    def check_device_per_task(self):
        """Three tasks on a node whose allocation lists GPUs 3,5: task 0
        gets 3, task 1 gets 5, both as cuda:0; task 2 has none of its own
        and says so. A stand-in prints what lathe-worker would be given."""
        fake = self.path("fake-lathe-worker")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho \"fake-worker local=$SLURM_LOCALID "
                    "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} $*\"\n")
        os.chmod(fake, 0o755)
        job_id = self.submit(ntasks=3, wait_running=False, extra_env={
            "LATHE_WORKER_BIN": fake, "LATHE_DEVICE": None,
            "CUDA_VISIBLE_DEVICES": "3,5"})
        self.wait_for(f"allocation {job_id} to end", lambda: self.slurm_state(
            job_id) in ("COMPLETED", "FAILED"), 90, 1)
        out = open(self.alloc_log(job_id)).read()
        wants = [
            r"fake-worker local=0 CUDA_VISIBLE_DEVICES=3 serve .*"
            rf"--worker_id=slurm-{job_id}\.0-localhost-0 .*--device=cuda:0",
            r"fake-worker local=1 CUDA_VISIBLE_DEVICES=5 serve .*"
            rf"--worker_id=slurm-{job_id}\.0-localhost-1 .*--device=cuda:0",
            r"task 2 on localhost: no GPU of its own \(the node gave 2: 3,5",
        ]
        for want in wants:
            if not re.search(want, out):
                raise Failure(f"allocation {job_id}: no line matching "
                              f"{want!r} in:\n{out}")
        log(f"allocation {job_id}: one GPU per task by SLURM_LOCALID "
            "(3, 5; the third task refused)")

    def still_running(self, job_id):
        state = self.slurm_state(job_id)
        if state != "RUNNING":
            raise Fatal(f"allocation {job_id} is {state or 'gone'}; "
                        f"its output:\n{tail(self.alloc_log(job_id), 30)}")

    def alloc_log(self, job_id):
        return self.path("alloc", f"slurm-{job_id}.out")

    def worker_id(self, job_id):
        return f"slurm-{job_id}.0-localhost-0"

    # -- the scenario ----------------------------------------------------

    def scenario(self):
        self.start_munge()
        self.write_slurm_conf()
        self.start_slurm()
        self.start_lathed()
        self.create_job()

        # 1. The first allocation's worker trains until a checkpoint is in.
        first = self.submit()

        def checkpointed():
            self.still_running(first)
            job = self.job()
            if job["status"] in ("JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED",
                                 "JOB_STATUS_SUCCEEDED"):
                raise Fatal(f"the job ended before the scancel: "
                            f"{job['status']} {job.get('error')}")
            ckpts = self.cli_json("jobs", "checkpoints", self.job_id)
            return job["status"] == "JOB_STATUS_RUNNING" and ckpts.get("data")
        self.wait_for("the first allocation's worker to upload a checkpoint",
                      checkpointed, 180, 0.3)
        job = self.job()
        total = int(job["progress"]["steps_total"])
        done = int(job["progress"].get("steps_done", 0))
        started = f"Job started on worker {self.worker_id(first)} (attempt 1)"
        if started not in self.messages():
            raise Failure(f"no event '{started}'")
        log(f"training on {self.worker_id(first)}: step {done} of {total}, "
            "a checkpoint uploaded; scancel")

        # 2. scancel: SIGTERM to the worker, which hands the job back.
        self.run(["scancel", first])

        def ended():
            return self.slurm_state(first) in ("CANCELLED", "COMPLETED",
                                               "FAILED", "")
        self.wait_for(f"allocation {first} to end after scancel", ended,
                      KILL_WAIT_S + 60, 1)
        log(f"allocation {first}: {self.slurm_state(first)}")

        requeue = re.compile(r"(The worker stopped at step (\d+) and handed "
                             r"the job back; requeued)|(Worker " +
                             re.escape(self.worker_id(first)) +
                             r" stopped reporting \(lease expired\))")

        def requeued():
            job = self.job()
            hits = [m for m in map(requeue.search, self.messages()) if m]
            return hits[-1] if job["status"] == "JOB_STATUS_QUEUED" and hits \
                else None
        hit = self.wait_for("the job to be requeued", requeued, 60)
        job = self.job()
        if int(job["attempt"]) != 1:
            raise Failure(f"attempt {job['attempt']} while queued, expected 1")
        if int(job["progress"].get("steps_done", 0)) >= total:
            raise Failure("the job had finished before the scancel")
        if hit.group(1):
            handed_back_at = int(hit.group(2))
            log(f"requeued: '{hit.group(1)}'")
        else:
            handed_back_at = None
            log(f"requeued by lease expiry (no hand-back): '{hit.group(3)}'")
        if "signal 15: stopping" not in open(self.alloc_log(first)).read():
            raise Failure(f"the worker of {first} did not see SIGTERM")
        ckpt_steps = [int(c["step_number"]) for c in
                      self.cli_json("jobs", "checkpoints", self.job_id)["data"]]
        latest = max(ckpt_steps)
        if handed_back_at is not None and latest != handed_back_at:
            raise Failure(f"handed back at step {handed_back_at} but the "
                          f"latest checkpoint is step {latest}")

        # 3. A second allocation resumes the job and finishes it.
        second = self.submit()

        def finished():
            self.still_running(second)
            job = self.job()
            if job["status"] in ("JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"):
                raise Fatal(f"the job ended {job['status']}: "
                            f"{job.get('error')}")
            return job if job["status"] == "JOB_STATUS_SUCCEEDED" else None
        job = self.wait_for("the job to succeed on the second allocation",
                            finished, 300, 1)
        msgs = self.messages()
        started = f"Job started on worker {self.worker_id(second)} (attempt 2)"
        resumed = (f"Resuming from the checkpoint at step {latest} on "
                   f"{self.worker_id(second)}")
        for want in (started, resumed):
            if not any(m.startswith(want) for m in msgs):
                raise Failure(f"no event '{want}...'; the events:\n" +
                              "\n".join(msgs))
        if int(job["attempt"]) != 2:
            raise Failure(f"succeeded at attempt {job['attempt']}, expected 2")
        if int(job["progress"]["steps_done"]) != total:
            raise Failure(f"steps {job['progress']}")
        if not job.get("fine_tuned_model"):
            raise Failure("no fine_tuned_model")
        log(f"succeeded on {self.worker_id(second)}, attempt 2, resumed at "
            f"step {latest} of {total}: {job['fine_tuned_model']}")

        # The drain deploy/slurm/README.md gives: SIGTERM to the workers
        # alone; they leave and the allocation ends by itself.
        self.run(["scancel", "--signal=TERM", second])
        self.wait_for(f"allocation {second} to complete after its workers "
                      "left", lambda: self.slurm_state(second) == "COMPLETED",
                      90, 1)
        log(f"allocation {second}: COMPLETED after scancel --signal=TERM")

        self.check_device_per_task()

    # -- on failure, and always --------------------------------------------

    def dump(self):
        print("\n==== slurm_test: state and logs ====", flush=True)
        slurm_up = any(name == "slurmctld" for name, _ in self.procs)
        for argv in (["sinfo", "-N", "-l"], ["squeue", "-l"]) if slurm_up \
                else ():
            try:
                print(f"---- {' '.join(argv)}\n" + self.run(argv, timeout=10,
                                                           check=False))
            except Exception as e:  # noqa: BLE001 - best effort
                print(f"---- {' '.join(argv)}: {e}")
        for job_id in self.allocations:
            try:
                print(f"---- scontrol show job {job_id}\n" + self.run(
                    ["scontrol", "show", "job", job_id], timeout=10,
                    check=False))
            except Exception as e:  # noqa: BLE001
                print(f"---- scontrol show job {job_id}: {e}")
        if getattr(self, "job_id", None) and getattr(self, "user_key", None):
            try:
                print(f"---- lathe jobs get {self.job_id}\n" +
                      self.cli("jobs", "get", self.job_id))
                print("---- its events (metrics left out)\n" +
                      "\n".join(self.messages()))
            except Exception as e:  # noqa: BLE001
                print(f"---- the job: {e}")
        logs = sorted(glob.glob(self.path("log", "*"))) + sorted(
            glob.glob(self.path("alloc", "*.out")))
        for path in logs:
            print(f"---- {path} (last lines)\n{tail(path)}", flush=True)

    def our_strays(self):
        """Processes of this test still alive: workers and job steps (their
        environment names this test's slurm.conf) and slurmstepd (which
        writes this test's slurmd log)."""
        pids = []
        needle = f"SLURM_CONF={self.conf}".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            pid = int(d)
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(pid)
                        continue
                if os.readlink(f"/proc/{pid}/exe").endswith("/slurmstepd"):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        try:
                            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(
                                    self.root + "/"):
                                pids.append(pid)
                                break
                        except OSError:
                            pass
            except OSError:
                pass
        return pids

    def cleanup(self):
        # Allocations first, at once (SIGKILL to every step and the batch
        # shell), while slurmctld and slurmd are there to do it.
        def quiet(argv):
            try:
                subprocess.run(argv, capture_output=True, env=self.env,
                               timeout=10)
            except Exception:  # noqa: BLE001 - best effort
                pass
        for job_id in self.allocations:
            quiet(["scancel", "--full", "--signal=KILL", job_id])
            quiet(["scancel", job_id])
        def over(job_id):
            try:
                return self.slurm_state(job_id) in ("CANCELLED", "COMPLETED",
                                                    "FAILED", "")
            except Exception:  # noqa: BLE001 - slurmctld may be gone
                return True
        deadline = time.monotonic() + 20
        while self.allocations and time.monotonic() < deadline:
            if all(over(j) for j in self.allocations):
                break
            time.sleep(1)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"{name} ignored SIGTERM; SIGKILL")
                    p.kill()
                    p.wait(10)
        for pid in self.our_strays():
            log(f"stray process {pid}: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main():
    if not sbin("slurmctld"):
        print("slurm_test: SKIPPED: slurmctld is not installed "
              "(apt-get install slurm-wlm munge; scripts/install-deps.sh)")
        return SKIP
    for tool in ("slurmd", "munged", "munge", "unmunge", "sbatch", "squeue",
                 "scancel", "sinfo", "scontrol"):
        if not sbin(tool):
            print(f"slurm_test: FAILED: slurmctld is installed but {tool} "
                  "is not (apt-get install slurm-wlm munge)")
            return 1
    t = SlurmTest()
    log(f"in {t.root}")

    def on_signal(sig, _frame):
        raise Fatal(f"stopped by signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok = False
    try:
        t.scenario()
        ok = True
    except Failure as e:
        print(f"slurm_test: FAILED: {e}", flush=True)
    except Exception:  # noqa: BLE001 - a bug here is a failure too
        import traceback
        traceback.print_exc()
    finally:
        # Nothing interrupts the clean-up.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        t.finishing = True
        try:
            if not ok:
                t.dump()
        finally:
            t.cleanup()
    if ok and os.environ.get("LATHE_KEEP_TEST_DIR") != "1":
        shutil.rmtree(t.root, ignore_errors=True)
    else:
        log(f"kept {t.root}")
    print("slurm_test: PASSED" if ok else "slurm_test: FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
