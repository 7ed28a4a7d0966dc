"""Lathe from Python: upload a chat dataset, fine-tune a LoRA adapter on it,
watch the loss fall, and download the adapter (Hugging Face PEFT layout).

    PYTHONPATH=build/clients/python /usr/bin/python3 clients/python/examples/quickstart.py \\
        --server 127.0.0.1:7070 --api-key sk-... --ca-cert /etc/lathe/ca.pem \\
        --model lathe-demo --training-file demo/train.jsonl --out adapter/

The connection arguments default to the CLI's environment variables
(LATHE_SERVER, LATHE_API_KEY, LATHE_CA_CERT, LATHE_INSECURE=1). The
"# %%" lines split it into cells for editors and notebooks that run a
script cell by cell.
"""

# %% Connect
import argparse
import sys

import lathe

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--server", help="lathed's host:port (default $LATHE_SERVER)")
parser.add_argument("--api-key", help="your API key (default $LATHE_API_KEY)")
parser.add_argument("--ca-cert", help="lathed's CA, PEM (default $LATHE_CA_CERT)")
parser.add_argument("--insecure", action="store_true", help="plaintext lathed")
parser.add_argument("--model", default="lathe-demo", help="a base model lathed knows")
parser.add_argument("--training-file", default="demo/train.jsonl", help="chat JSONL")
parser.add_argument("--n-epochs", type=int, default=3)
parser.add_argument("--out", default="adapter", help="where the adapter goes")
# parse_known_args: a notebook kernel passes arguments of its own.
args, _ = parser.parse_known_args()

client = lathe.Client(args.server, args.api_key, ca_cert=args.ca_cert, insecure=args.insecure)

# %% Upload: lathed checks every line before it answers.


def show_upload(done, total):
    print(f"\ruploading {done}/{total} bytes", end="", flush=True)


file = client.files.upload(args.training_file, progress=show_upload)
print(f"\nuploaded {file.id}: {file.line_count} examples, sha256 {file.sha256[:12]}...")

# %% Create a LoRA job; hyperparameters left out are auto.
job = client.jobs.create(model=args.model, training_file=file.id, suffix="quickstart",
                         hyperparameters={"n_epochs": args.n_epochs}, lora={"rank": 8})
print(f"created {job.id}, {lathe.JobStatus.Name(job.status)}")

# %% Watch it train (the watch re-attaches by itself if the stream drops).
for event in client.jobs.watch(job.id):
    if event.type == "metrics":
        m = event.metrics
        print(f"step {m.step:4d}/{m.total_steps}  loss {m.train_loss:.4f}  "
              f"accuracy {m.train_mean_token_accuracy:.3f}")
    else:
        print(event.message)
job = client.jobs.get(job.id)
if job.status != lathe.JobStatus.JOB_STATUS_SUCCEEDED:
    sys.exit(f"{job.id} ended {lathe.JobStatus.Name(job.status)}: {job.error.message}")

# %% Download the adapter: every file checked against its SHA-256.
for path in client.jobs.download_adapter(job.id, args.out):
    print(f"wrote {path}")
print(f"fine-tuned model {job.fine_tuned_model}, {job.trained_tokens} tokens trained")
client.close()
