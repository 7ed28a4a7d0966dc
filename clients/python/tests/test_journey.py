"""The client against a real lathed: a user's whole journey, and its errors.

Needs a lathed with the demo model "lathe-demo", one worker, and a short
--max_stream_seconds (2) so that watches really drop and re-attach;
tests/python_client_test.cc starts one and sets:
  LATHE_SERVER, LATHE_API_KEY, LATHE_CA_CERT  where and who (a user key)
  LATHE_DEMO_DIR                              the demo (train.jsonl)
  LATHE_TEST_DIR                              a scratch folder
"""

import hashlib
import os
import re
import tempfile
import threading
import unittest

import grpc

import lathe

_ENV = ("LATHE_SERVER", "LATHE_API_KEY", "LATHE_CA_CERT", "LATHE_DEMO_DIR")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@unittest.skipUnless(all(os.environ.get(v) for v in _ENV),
                     "needs a lathed: " + ", ".join(_ENV) + " (tests/python_client_test.cc)")
class JourneyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = os.environ["LATHE_SERVER"]
        cls.key = os.environ["LATHE_API_KEY"]
        cls.ca = os.environ["LATHE_CA_CERT"]
        cls.client = lathe.Client(cls.server, cls.key, ca_cert=cls.ca)
        cls.train = os.path.join(os.environ["LATHE_DEMO_DIR"], "train.jsonl")
        cls.scratch = tempfile.mkdtemp(prefix="python-", dir=os.environ.get("LATHE_TEST_DIR"))

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_upload_train_watch_download(self):
        c = self.client
        # Upload, in chunks small enough for several progress calls.
        size = os.path.getsize(self.train)
        calls = []
        file = c.files.upload(self.train, progress=lambda done, total: calls.append((done, total)),
                              chunk_size=max(size // 5, 1))
        self.assertGreaterEqual(len(calls), 5)
        done = [d for d, _ in calls]
        self.assertEqual(done, sorted(set(done)), "progress must strictly increase")
        self.assertEqual(done[-1], size)
        self.assertEqual({t for _, t in calls}, {size})
        self.assertEqual(file.sha256, _sha256(self.train))
        self.assertEqual(file.bytes, size)
        self.assertEqual(file.filename, "train.jsonl")
        self.assertEqual(c.files.get(file.id), file)
        self.assertIn(file.id, [f.id for f in c.files.list()])
        copy = os.path.join(self.scratch, "copy.jsonl")
        self.assertEqual(c.files.download(file.id, copy), copy)
        with open(copy, "rb") as a, open(self.train, "rb") as b:
            self.assertEqual(a.read(), b.read())

        # Create, paused at once: the job stays put past --max_stream_seconds
        # (2 s) while it is watched, so the stream surely drops once; a
        # resume 3 s in lets it train and finish.
        job = c.jobs.create(model="lathe-demo", training_file=file.id, suffix="py", seed=7,
                            hyperparameters={"n_epochs": 2, "batch_size": 4},
                            lora={"rank": 4}, metadata={"client": "python"})
        self.assertEqual(job.model, "lathe-demo")
        self.assertEqual(job.method.supervised.hyperparameters.n_epochs, 2)
        self.assertEqual(job.lora.rank, 4)
        self.assertEqual(dict(job.metadata), {"client": "python"})
        paused = c.jobs.pause(job.id)
        self.assertEqual(paused.status, lathe.JobStatus.JOB_STATUS_PAUSED)
        resumed = []
        timer = threading.Timer(3.0, lambda: resumed.append(c.jobs.resume(job.id)))
        timer.start()
        watch = c.jobs.watch(job.id, timeout=120)
        events, losses = [], []
        for event in watch:
            events.append(event)
            if event.type == "metrics":
                losses.append(event.metrics.train_loss)
                print(f"step {event.metrics.step}/{event.metrics.total_steps} "
                      f"loss {event.metrics.train_loss:.4f}")
        timer.join()
        self.assertEqual(len(resumed), 1, "the resume call failed")
        print(f"watch re-attached {watch.reattaches} times over {len(events)} events")
        self.assertGreaterEqual(watch.reattaches, 1)

        # Every event exactly once, in order: as ListJobEvents has them
        # (paged 7 at a time), numbered 1, 2, 3, ... by the job.
        listed = list(c.jobs.events(job.id, limit=7))
        self.assertEqual([e.id for e in events], [e.id for e in listed])
        self.assertEqual(events, listed)
        numbers = [int(re.fullmatch(r"ftevent-.+-(\d+)", e.id).group(1)) for e in events]
        self.assertEqual(numbers, list(range(1, len(events) + 1)))
        self.assertEqual(watch.cursor, events[-1].id)
        statuses = [e.status for e in events if e.status]
        self.assertIn(lathe.JobStatus.JOB_STATUS_PAUSED, statuses)
        self.assertEqual(statuses[-1], lathe.JobStatus.JOB_STATUS_SUCCEEDED)
        self.assertEqual(watch.job.status, lathe.JobStatus.JOB_STATUS_SUCCEEDED)

        final = c.jobs.wait(job.id, timeout=30)
        self.assertEqual(final.status, lathe.JobStatus.JOB_STATUS_SUCCEEDED, final.error.message)
        self.assertTrue(final.fine_tuned_model.startswith("ft:lathe-demo:py:"))
        self.assertGreaterEqual(len(losses), 10)
        self.assertEqual(events[-1].id, listed[-1].id)
        metrics = [e.metrics for e in events if e.type == "metrics"]
        self.assertEqual(metrics[-1].step, final.progress.steps_total)
        self.assertLess(losses[-1], losses[0])

        # The adapter, each file checked here against the job's result_files.
        progress = []
        out = os.path.join(self.scratch, "adapter")
        paths = c.jobs.download_adapter(job.id, out, progress=lambda d, t: progress.append((d, t)))
        self.assertEqual(sorted(os.path.basename(p) for p in paths),
                         sorted(f.name for f in final.result_files))
        self.assertIn("adapter_model.safetensors", [f.name for f in final.result_files])
        for f in final.result_files:
            path = os.path.join(out, f.name)
            self.assertEqual(_sha256(path), f.sha256, f.name)
            self.assertEqual(os.path.getsize(path), f.bytes, f.name)
        self.assertEqual(sorted(os.listdir(out)), sorted(f.name for f in final.result_files))
        self.assertEqual(progress[-1][0], sum(f.bytes for f in final.result_files))
        self.assertEqual([d for d, _ in progress], sorted(d for d, _ in progress))

        for checkpoint in c.jobs.checkpoints(job.id):
            self.assertEqual(checkpoint.job_id, job.id)
        model = c.models.get(final.fine_tuned_model)
        self.assertEqual(model.kind, "fine-tuned")
        self.assertEqual(model.job_id, job.id)
        self.assertEqual(model.base_model, "lathe-demo")
        ids = [m.id for m in c.models.list()]
        self.assertIn("lathe-demo", ids)
        self.assertIn(final.fine_tuned_model, ids)

        # A finished job cannot be cancelled.
        with self.assertRaises(lathe.FailedPrecondition) as e:
            c.jobs.cancel(job.id)
        self.assertEqual(e.exception.reason, "WRONG_STATE")

        # A second job, cancelled; then every job, one per page.
        second = c.jobs.create(model="lathe-demo", training_file=file.id,
                               hyperparameters={"n_epochs": 50})
        self.assertIn(c.jobs.cancel(second.id).status,
                      (lathe.JobStatus.JOB_STATUS_CANCELLING, lathe.JobStatus.JOB_STATUS_CANCELLED))
        self.assertEqual(c.jobs.wait(second.id, timeout=60).status,
                         lathe.JobStatus.JOB_STATUS_CANCELLED)
        one_per_page = [j.id for j in c.jobs.list(limit=1)]
        self.assertEqual(one_per_page, [j.id for j in c.jobs.list()])
        self.assertEqual(one_per_page[:2], [second.id, job.id])
        self.assertEqual([j.id for j in c.jobs.list(status="cancelled")], [second.id])
        self.assertEqual([j.id for j in c.jobs.list(metadata={"client": "python"})], [job.id])

        # With both jobs finished, the file can go.
        self.assertTrue(c.files.delete(file.id).deleted)
        with self.assertRaises(lathe.NotFound):
            c.files.get(file.id)

    def test_a_bad_field_is_invalid_argument_naming_it(self):
        with self.assertRaises(lathe.InvalidArgument) as e:
            self.client.jobs.create(model="lathe-demo", training_file="file-x",
                                    lora={"alpha": -1})
        err = e.exception
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(err.field, "lora.alpha")
        self.assertEqual(err.reason, "INVALID_FIELD")
        self.assertEqual(err.violations, [("lora.alpha", "must be in (0, 65536]")])
        self.assertIn("lora.alpha", err.message)
        with self.assertRaises(lathe.InvalidArgument) as e:
            self.client.jobs.create(model="lathe-demo", training_file="file-x",
                                    hyperparameters={"n_epochs": 0})
        self.assertTrue(e.exception.field.endswith("hyperparameters.n_epochs"), e.exception.field)

    def test_a_bad_line_is_invalid_argument_naming_the_line_and_field(self):
        bad = os.path.join(self.scratch, "bad.jsonl")
        with open(bad, "w") as f:
            f.write('{"messages":[{"role":"user","content":"q"},'
                    '{"role":"assistant","content":"a"}]}\n')
            f.write('{"messages":[{"role":"user","content":"q"},'
                    '{"role":"robot","content":"a"}]}\n')
        with self.assertRaises(lathe.InvalidArgument) as e:
            self.client.files.upload(bad)
        self.assertEqual(e.exception.reason, "INVALID_LINE")
        self.assertEqual(e.exception.line, 2)
        self.assertEqual(e.exception.field, "messages[1].role")

    def test_unknown_ids_are_not_found(self):
        with self.assertRaises(lathe.NotFound) as e:
            self.client.files.get("file-doesnotexist")
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(e.exception.reason, "NOT_FOUND")
        with self.assertRaises(lathe.NotFound):
            self.client.jobs.get("ftjob-doesnotexist")
        with self.assertRaises(lathe.NotFound):
            list(self.client.jobs.watch("ftjob-doesnotexist"))
        with self.assertRaises(lathe.NotFound) as e:
            self.client.jobs.create(model="lathe-demo", training_file="file-doesnotexist")
        self.assertEqual(e.exception.field, "training_file")
        with self.assertRaises(lathe.NotFound):
            self.client.models.get("no-such-model")

    def test_a_bad_key_is_unauthenticated(self):
        with lathe.Client(self.server, "sk-not-a-key", ca_cert=self.ca) as stranger:
            with self.assertRaises(lathe.Unauthenticated) as e:
                next(iter(stranger.files.list()))
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(lathe.Unauthenticated):
                stranger.models.list()


if __name__ == "__main__":
    unittest.main()
