#!/usr/bin/env python3
"""Hugging Face transformers (+ PEFT for LoRA) training on engine_bench's
model shape: the baseline scripts/device-check.sh sets the engine against.

Takes engine_bench's shape flags (--hidden=2048 ...), trains a random
LlamaForCausalLM with float32 master weights, bfloat16 autocast on CUDA (as
the engine computes) and AdamW, on random token ids of batch x seq_len, and
prints

    tokens/s: N
    peak memory: M MiB
"""
import argparse
import resource
import time

SHAPE = {
    "hidden": 256, "intermediate": 688, "layers": 4, "heads": 8,
    "kv_heads": 4, "vocab": 32000, "seq_len": 256, "batch": 4, "steps": 8,
    "warmup_steps": 2, "threads": 2, "lora_rank": 16,
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj",
               "gate_proj", "up_proj", "down_proj"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--device", default="cuda")
    for name, default in SHAPE.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    a = parser.parse_args()

    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    config = transformers.LlamaConfig(
        hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
        max_position_embeddings=max(a.seq_len, 2048), rope_theta=500000.0,
        tie_word_embeddings=True, attn_implementation="sdpa")
    with device:
        model = transformers.LlamaForCausalLM(config)
    if a.method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
            target_modules=PROJECTIONS))
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=device)
    cuda = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(a.warmup_steps):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tokens/s: {a.batch * a.seq_len * a.steps / elapsed:.0f}")
    print(f"peak memory: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
