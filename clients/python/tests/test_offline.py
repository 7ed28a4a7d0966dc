"""What the client does before and after a call, without a server: request
messages from keyword arguments, and errors from lathed's rich details."""

import unittest

import grpc

import lathe
from google.rpc import error_details_pb2, status_pb2
from lathe.messages import fill
from lathe.v1 import fine_tuning_pb2


class FillTest(unittest.TestCase):
    def test_nested_dicts_lists_maps_and_short_enum_names(self):
        r = fill(fine_tuning_pb2.CreateJobRequest(), {
            "model": "lathe-demo",
            "lora": {"rank": 4, "target_modules": ["q_proj", "v_proj"], "use_rslora": True},
            "adapter": "lora",
            "priority": "HIGH",
            "metadata": {"team": "nlp"},
            "method": {"type": "dpo", "dpo": {"hyperparameters": {
                "beta": 0.2, "loss_type": "ipo", "lr_scheduler": "LR_SCHEDULER_COSINE"}}},
            "training_mixture": {"sources": [{"file_id": "file-a", "weight": 2.0},
                                             {"file_id": "file-b"}]},
            "seed": None,
        })
        self.assertEqual(r.lora.rank, 4)
        self.assertEqual(list(r.lora.target_modules), ["q_proj", "v_proj"])
        self.assertTrue(r.lora.use_rslora)
        self.assertEqual(r.adapter, fine_tuning_pb2.ADAPTER_TYPE_LORA)
        self.assertEqual(r.priority, fine_tuning_pb2.JOB_PRIORITY_HIGH)
        self.assertEqual(dict(r.metadata), {"team": "nlp"})
        hp = r.method.dpo.hyperparameters
        self.assertAlmostEqual(hp.beta, 0.2)
        self.assertEqual(hp.loss_type, fine_tuning_pb2.PREFERENCE_LOSS_IPO)
        self.assertEqual(hp.lr_scheduler, fine_tuning_pb2.LR_SCHEDULER_COSINE)
        self.assertFalse(hp.HasField("n_epochs"))  # auto stays unset
        self.assertEqual([s.file_id for s in r.training_mixture.sources], ["file-a", "file-b"])
        self.assertFalse(r.training_mixture.sources[1].HasField("weight"))
        self.assertFalse(r.HasField("seed"))  # None = auto

    def test_an_empty_dict_sets_a_message(self):
        r = fill(fine_tuning_pb2.CreateJobRequest(), {"reports": {}})
        self.assertTrue(r.HasField("reports"))

    def test_a_message_is_copied(self):
        lora = fine_tuning_pb2.LoraConfig(rank=2)
        r = fill(fine_tuning_pb2.CreateJobRequest(), {"lora": lora})
        self.assertEqual(r.lora.rank, 2)
        with self.assertRaisesRegex(TypeError, "^lora: expected a lathe.v1.LoraConfig"):
            fill(fine_tuning_pb2.CreateJobRequest(), {"lora": fine_tuning_pb2.Lisa()})

    def test_mistakes_name_the_field_path(self):
        with self.assertRaisesRegex(TypeError, "^lora.rnak: lathe.v1.LoraConfig has no field"):
            fill(fine_tuning_pb2.CreateJobRequest(), {"lora": {"rnak": 4}})
        with self.assertRaisesRegex(TypeError, "^lora.rank: "):
            fill(fine_tuning_pb2.CreateJobRequest(), {"lora": {"rank": "four"}})
        with self.assertRaisesRegex(ValueError, "^adapter: 'half' is not a AdapterType: use one "
                                    "of lora, full, prompt_tuning, s2ft$"):
            fill(fine_tuning_pb2.CreateJobRequest(), {"adapter": "half"})
        with self.assertRaisesRegex(TypeError, r"^lora.target_modules: expected a list"):
            fill(fine_tuning_pb2.CreateJobRequest(), {"lora": {"target_modules": "q_proj"}})
        with self.assertRaisesRegex(TypeError, r"^training_mixture.sources\[1\].weight: "):
            fill(fine_tuning_pb2.CreateJobRequest(),
                 {"training_mixture": {"sources": [{}, {"weight": "heavy"}]}})


class CreateArgumentsTest(unittest.TestCase):
    """jobs.create's own arguments, checked before anything is sent."""

    def setUp(self):
        # Nothing listens there: a call that were sent would fail with
        # Unavailable, not with the errors asserted.
        self.client = lathe.Client("127.0.0.1:1", "sk-none", insecure=True, timeout=5)

    def tearDown(self):
        self.client.close()

    def test_unknown_arguments_are_refused_locally(self):
        with self.assertRaisesRegex(TypeError, "^modle: lathe.v1.CreateJobRequest has no field"):
            self.client.jobs.create(modle="lathe-demo")

    def test_hyperparameters_need_a_method_that_takes_them(self):
        with self.assertRaisesRegex(ValueError, "^hyperparameters: method 'merge' takes none"):
            self.client.jobs.create(method="merge", hyperparameters={"n_epochs": 1})
        with self.assertRaisesRegex(TypeError, "^method.dpo.hyperparameters.n_epocs: "):
            self.client.jobs.create(method="dpo", hyperparameters={"n_epocs": 1})

    def test_an_unreachable_server_is_unavailable(self):
        with self.assertRaises(lathe.Unavailable) as e:
            self.client.jobs.get("ftjob-x")
        self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailing):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def _rich(code, message, reason, metadata, violations=()):
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(
        reason=reason, domain="lathe.v1", metadata=metadata))
    if violations:
        bad = error_details_pb2.BadRequest()
        for field, description in violations:
            bad.field_violations.add(field=field, description=description)
        status.details.add().Pack(bad)
    return _FakeRpcError(code, message, (("grpc-status-details-bin", status.SerializeToString()),))


class ErrorsTest(unittest.TestCase):
    def test_a_bad_line_names_the_line_and_the_field(self):
        message = 'line 2: messages[1].role: unknown role "robot"'
        e = lathe.errors.from_rpc_error(_rich(
            grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_LINE",
            {"line": "2", "field": "messages[1].role"},
            [("line 2: messages[1].role", 'unknown role "robot"')]))
        self.assertIsInstance(e, lathe.InvalidArgument)
        self.assertIsInstance(e, lathe.LatheError)
        self.assertEqual(e.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.message, message)
        self.assertEqual(e.reason, "INVALID_LINE")
        self.assertEqual(e.line, 2)
        self.assertEqual(e.field, "messages[1].role")
        self.assertIsNone(e.limit)
        self.assertEqual(e.violations, [("line 2: messages[1].role", 'unknown role "robot"')])
        self.assertEqual(str(e), "INVALID_ARGUMENT: " + message)

    def test_each_code_has_its_class(self):
        for code, cls in [(grpc.StatusCode.NOT_FOUND, lathe.NotFound),
                          (grpc.StatusCode.RESOURCE_EXHAUSTED, lathe.ResourceExhausted),
                          (grpc.StatusCode.FAILED_PRECONDITION, lathe.FailedPrecondition),
                          (grpc.StatusCode.UNAUTHENTICATED, lathe.Unauthenticated),
                          (grpc.StatusCode.PERMISSION_DENIED, lathe.PermissionDenied),
                          (grpc.StatusCode.ALREADY_EXISTS, lathe.AlreadyExists),
                          (grpc.StatusCode.UNAVAILABLE, lathe.Unavailable),
                          (grpc.StatusCode.DATA_LOSS, lathe.DataLoss)]:
            e = lathe.errors.from_rpc_error(_FakeRpcError(code, "m", ()))
            self.assertIs(type(e), cls)
            self.assertEqual(e.code, code)
            self.assertEqual(e.reason, "")
            self.assertIsNone(e.field)
            self.assertIsNone(e.details)

    def test_a_limit_is_named(self):
        e = lathe.errors.from_rpc_error(_rich(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "line 51: more than 50 examples "
            "(max_examples_per_file)", "LIMIT_EXCEEDED",
            {"line": "51", "limit": "max_examples_per_file"}))
        self.assertIsInstance(e, lathe.ResourceExhausted)
        self.assertEqual(e.limit, "max_examples_per_file")
        self.assertEqual(e.line, 51)


if __name__ == "__main__":
    unittest.main()
