#!/usr/bin/env python3
"""hf_reference.py: the Hugging Face baseline for engine_bench, re-implemented.

transformers and PEFT cannot be installed on the machines this project builds
on, so this script re-implements, in plain PyTorch and operation for operation,
what a fine-tuning run with them computes on CPU:

  * transformers' LlamaForCausalLM on the eager attention path, as
    modeling_llama.py has it in 4.4x (4.40-4.47): token embedding; per layer
    LlamaRMSNorm (float32 upcast), q/k/v projections, rotary embedding with
    rotate_half, repeat_kv for grouped-query attention, scores / sqrt(head_dim)
    plus the 4D causal-and-padding mask (finfo.min), softmax in float32, o_proj,
    residual, RMSNorm, SwiGLU MLP (down(silu(gate(x)) * up(x))), residual; final
    norm; lm_head over every position; logits.float(); the loss as
    ForCausalLMLoss has it: logits[..., :-1, :].contiguous() against
    labels[..., 1:], CrossEntropyLoss(ignore_index=-100), mean.  (On
    torch 1.13 transformers has no SDPA path: eager is what it runs.)
  * PEFT's LoRA (peft.tuners.lora.Linear): base layer frozen, lora_A
    kaiming_uniform_(a=sqrt(5)), lora_B zeros, dropout 0 (nn.Identity),
    result + lora_B(lora_A(x)) * (lora_alpha / r), on the seven projections;
    every base weight frozen (get_peft_model).
  * the Trainer's step (transformers' Trainer with default arguments):
    model.train(), forward with labels, loss.backward(), clip_grad_norm_(1.0)
    over model.parameters(), torch.optim.AdamW (adamw_torch: betas 0.9/0.999,
    eps 1e-8, weight decay 0), a linear LR schedule, model.zero_grad().
  * DataCollatorForSeq2Seq: each batch right-padded to its longest row
    (no pad_to_multiple_of), attention_mask 0 and labels -100 on the pads.

It does not import transformers' Python, so the Python-side overhead of the
real stack (hooks, ModelOutput objects, Trainer callbacks and logging) and the
RSS of importing transformers / PEFT / accelerate are NOT counted: the real
stack is, if anything, slower and larger than this.  DynamicCache (use_cache
in training) holds one key and value per layer; not kept here (a few MiB).

Flags follow engine_bench's names (`--help`).  Random weights (HF's init:
normal(0, 0.02), norms ones), random token ids, example lengths uniform in
[seq_len/2, seq_len]; chat data labels the last --assistant_share of each
example's tokens, text data labels every token.  Prints tokens/s (real, i.e.
non-padding tokens / measured seconds) and the peak resident memory.

`--check_fixture=DIR` instead loads a save_pretrained Llama (config.json +
model.safetensors, read without the safetensors package) and prints the
largest difference between this forward and the reference logits and losses
stored beside it (the fixture's logits0.safetensors, expected.jsonl, and with
adapter_ref/ the PEFT adapter's lora_logits0.safetensors);
`--lathe_logits=FILE` compares a Lathe `score --logits-out` file as well.
"""

import argparse
import json
import math
import os
import random
import resource
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


# --------------------------------------------------------------------------
# transformers' modeling_llama.py (eager), 4.4x


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (
            base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(
            position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos()
        sin = emb.sin()
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(
        batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.hidden_size = cfg["hidden_size"]
        self.num_heads = cfg["num_attention_heads"]
        self.head_dim = cfg.get("head_dim") or self.hidden_size // self.num_heads
        self.num_key_value_heads = cfg["num_key_value_heads"]
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.attention_dropout = cfg.get("attention_dropout", 0.0)
        self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask, position_embeddings):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
            attn_weights = attn_weights + causal_mask
        # upcast attention to fp32
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_weights = nn.functional.dropout(attn_weights, p=self.attention_dropout, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, -1)
        return self.o_proj(attn_output)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.input_layernorm = LlamaRMSNorm(cfg["hidden_size"], eps=eps)
        self.post_attention_layernorm = LlamaRMSNorm(cfg["hidden_size"], eps=eps)

    def forward(self, hidden_states, attention_mask, position_embeddings):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, attention_mask, position_embeddings)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


def update_causal_mask(attention_mask, input_tensor, cache_position):
    """LlamaModel._update_causal_mask for eager attention and no cache
    (_prepare_4d_causal_attention_mask_with_cache_position)."""
    dtype = input_tensor.dtype
    sequence_length = input_tensor.shape[1]
    target_length = attention_mask.shape[-1]
    batch_size = input_tensor.shape[0]
    min_dtype = torch.finfo(dtype).min
    causal_mask = torch.full((sequence_length, target_length), fill_value=min_dtype, dtype=dtype)
    if sequence_length != 1:
        causal_mask = torch.triu(causal_mask, diagonal=1)
    causal_mask *= torch.arange(target_length) > cache_position.reshape(-1, 1)
    causal_mask = causal_mask[None, None, :, :].expand(batch_size, 1, -1, -1)
    causal_mask = causal_mask.clone()
    mask_length = attention_mask.shape[-1]
    padding_mask = causal_mask[:, :, :, :mask_length] + attention_mask[:, None, None, :]
    padding_mask = padding_mask == 0
    causal_mask[:, :, :, :mask_length] = causal_mask[:, :, :, :mask_length].masked_fill(
        padding_mask, min_dtype)
    return causal_mask


class LlamaModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], cfg.get("pad_token_id"))
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = LlamaRMSNorm(cfg["hidden_size"], eps=cfg.get("rms_norm_eps", 1e-6))
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.rotary_emb = LlamaRotaryEmbedding(head_dim, base=cfg.get("rope_theta", 10000.0))

    def forward(self, input_ids, attention_mask):
        inputs_embeds = self.embed_tokens(input_ids)
        cache_position = torch.arange(0, inputs_embeds.shape[1])
        position_ids = cache_position.unsqueeze(0)
        causal_mask = update_causal_mask(attention_mask, inputs_embeds, cache_position)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(hidden_states, causal_mask, position_embeddings)
        return self.norm(hidden_states)


def for_causal_lm_loss(logits, labels, vocab_size, ignore_index=-100):
    """transformers.loss.loss_utils.ForCausalLMLoss (4.46/4.47), mean
    reduction; 4.40-4.45 inlined the same lines in LlamaForCausalLM."""
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    shift_logits = shift_logits.view(-1, vocab_size)
    shift_labels = shift_labels.view(-1)
    return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index,
                                       reduction="mean")


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.vocab_size = cfg["vocab_size"]
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, std=0.02):
        # LlamaPreTrainedModel._init_weights
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.data.normal_(mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                module.weight.data.normal_(mean=0.0, std=std)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()

    def forward(self, input_ids, attention_mask, labels=None):
        hidden_states = self.model(input_ids, attention_mask)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = for_causal_lm_loss(logits, labels, self.vocab_size)
        return loss, logits


# --------------------------------------------------------------------------
# PEFT's LoRA (peft.tuners.lora.layer.Linear), one adapter, no dropout


class LoraLinear(nn.Module):
    def __init__(self, base_layer, r, lora_alpha):
        super().__init__()
        self.base_layer = base_layer
        self.lora_dropout = nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)
        self.scaling = lora_alpha / r
        # reset_lora_parameters(init_lora_weights=True)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        result = self.base_layer(x)
        torch_result_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result.to(torch_result_dtype)


def get_peft_model(model, r, lora_alpha, target_modules):
    """Freezes every base weight and wraps the target nn.Linear modules."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(target_modules)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoraLinear(child, r, lora_alpha))
    return model


# --------------------------------------------------------------------------
# safetensors, read by hand (8-byte little-endian header length, JSON, data)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32}


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = bytearray(blob[base + begin: base + end])
        t = torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]) if buf else \
            torch.empty(0, dtype=_ST_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


# --------------------------------------------------------------------------
# the fixture check


def check_fixture(fixture, lathe_logits):
    model_dir = os.path.join(fixture, "model")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    model = LlamaForCausalLM(cfg)
    state = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        print("state dict mismatch: missing", missing, "unexpected", unexpected)
        return 1
    model.eval()
    with open(os.path.join(fixture, "expected.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    failures = 0

    def forward(m, ids):
        x = torch.tensor([ids])
        with torch.no_grad():
            return m(x, torch.ones_like(x))[1]

    # Logits of conversation 0 against transformers'.
    ref = load_safetensors(os.path.join(fixture, "logits0.safetensors"))["logits"]
    ours = forward(model, rows[0]["input_ids"])
    diff = (ours - ref).abs().max().item()
    print(f"base logits, conversation 0 {list(ref.shape)}: max |ours - transformers| = {diff:.3e}")
    failures += diff > 1e-4
    if lathe_logits:
        lathe = load_safetensors(lathe_logits)["logits"]
        d1 = (lathe - ours).abs().max().item()
        d2 = (lathe - ref).abs().max().item()
        print(f"  Lathe score --logits-out {list(lathe.shape)}: max |Lathe - ours| = {d1:.3e}, "
              f"max |Lathe - transformers| = {d2:.3e}")
        failures += d1 > 1e-4

    # Losses of every conversation (all tokens; assistant tokens) against
    # the fixture's, through the training loss path (labels, shift, -100).
    worst = 0.0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        mask = torch.tensor([row["assistant_mask"]], dtype=torch.bool)
        with torch.no_grad():
            loss_all, _ = model(ids, torch.ones_like(ids), labels=ids)
            loss_asst, _ = model(ids, torch.ones_like(ids),
                                 labels=ids.masked_fill(~mask, -100))
        worst = max(worst, abs(loss_all.item() - row["loss_all"]),
                    abs(loss_asst.item() - row["loss_assistant"]))
    print(f"losses, {len(rows)} conversations (all tokens, assistant tokens): "
          f"max |ours - transformers| = {worst:.3e}")
    failures += worst > 1e-4

    # A padded batch of all conversations gives each row's unpadded logits.
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.int64)
    att = torch.zeros(len(rows), longest, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        att[i, : len(r["input_ids"])] = 1
    with torch.no_grad():
        batched = model(ids, att)[1]
    worst = 0.0
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        worst = max(worst, (batched[i, :n] - forward(model, r["input_ids"])[0]).abs().max().item())
    print(f"right-padded batch of {len(rows)} vs one by one: max diff = {worst:.3e}")
    failures += worst > 1e-4

    # The PEFT adapter: base + adapter_ref against PEFT's logits.
    adapter_dir = os.path.join(fixture, "adapter_ref")
    lora_ref_path = os.path.join(fixture, "lora_logits0.safetensors")
    if os.path.isdir(adapter_dir) and os.path.exists(lora_ref_path):
        with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
            acfg = json.load(f)
        get_peft_model(model, acfg["r"], acfg["lora_alpha"], acfg["target_modules"])
        adapter = load_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
        # PEFT saves base_model.model.<module>.lora_A.weight (adapter name dropped).
        renamed = {}
        for k, v in adapter.items():
            k = k[len("base_model.model."):] if k.startswith("base_model.model.") else k
            renamed[k] = v
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        lora_missing = [k for k in missing if ".lora_" in k]
        if lora_missing or unexpected:
            print("adapter mismatch: missing", lora_missing, "unexpected", unexpected)
            return 1
        ref = load_safetensors(lora_ref_path)["logits"]
        diff = (forward(model, rows[0]["input_ids"]) - ref).abs().max().item()
        print(f"base + PEFT adapter_ref (r={acfg['r']}, alpha={acfg['lora_alpha']}, "
              f"{','.join(acfg['target_modules'])}), conversation 0: "
              f"max |ours - PEFT| = {diff:.3e}")
        failures += diff > 1e-4
    print("fixture check:", "FAILED" if failures else "ok (all within 1e-4)")
    return 1 if failures else 0


# --------------------------------------------------------------------------
# the benchmark


def peak_rss_mib():
    vm_hwm = -1.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    vm_hwm = float(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return vm_hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_examples(o, n, rng):
    """n examples of uniform [seq_len/2, seq_len] tokens; labels -100 on the
    prompt part of chat examples (all but the last assistant_share)."""
    examples = []
    for _ in range(n):
        length = rng.randint(o.seq_len // 2, o.seq_len)
        ids = [rng.randrange(3, o.vocab) for _ in range(length)]
        if o.data == "text":
            labels = list(ids)
        else:
            answer = max(1, int(round(length * o.assistant_share)))
            labels = [-100] * (length - answer) + ids[length - answer:]
        examples.append((ids, labels))
    return examples


def collate(examples, pad_id=0):
    """DataCollatorForSeq2Seq, right padding to the longest row."""
    longest = max(len(ids) for ids, _ in examples)
    b = len(examples)
    input_ids = torch.full((b, longest), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((b, longest), dtype=torch.int64)
    labels = torch.full((b, longest), -100, dtype=torch.int64)
    for i, (ids, lab) in enumerate(examples):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(lab)
    return input_ids, attention_mask, labels


def bench(o):
    torch.set_num_threads(o.threads)
    torch.manual_seed(o.seed)
    rng = random.Random(o.seed)
    cfg = {
        "hidden_size": o.hidden, "intermediate_size": o.intermediate,
        "num_hidden_layers": o.layers, "num_attention_heads": o.heads,
        "num_key_value_heads": o.kv_heads, "vocab_size": o.vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }
    model = LlamaForCausalLM(cfg)
    model.init_weights()
    targets = o.lora_targets.split(",")
    if o.method == "lora":
        get_peft_model(model, o.lora_rank, o.lora_alpha or 2.0 * o.lora_rank, targets)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_all = sum(p.numel() for p in model.parameters())

    # Trainer.create_optimizer: adamw_torch, weight_decay 0 for every group.
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.0)
    total_steps = o.warmup_steps + o.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, float(total_steps - step) / float(max(1, total_steps))))

    examples = make_examples(o, o.batch * total_steps, rng)
    batches = [collate(examples[i * o.batch:(i + 1) * o.batch]) for i in range(total_steps)]
    if o.same_batch:  # a sanity check: the loss must fall on a batch seen again
        batches = [batches[0]] * total_steps
    labelled = sum(sum(1 for t in lab if t != -100) for _, lab in examples)
    real = sum(len(ids) for ids, _ in examples)

    tokens = seconds = 0.0
    padding = computed = 0
    losses = []
    model.zero_grad()
    for step, (input_ids, attention_mask, labels) in enumerate(batches, start=1):
        start = time.perf_counter()
        loss, _ = model(input_ids, attention_mask, labels=labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
        optimizer.step()
        scheduler.step()
        model.zero_grad()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        step_tokens = int(attention_mask.sum())
        padding += attention_mask.numel() - step_tokens
        computed += attention_mask.numel()
        if o.verbose:
            print(f"step {step}: loss {losses[-1]:.4f}, {step_tokens} real tokens of "
                  f"{attention_mask.numel()}, {elapsed:.3f} s", flush=True)
        if step <= o.warmup_steps:
            continue
        tokens += step_tokens
        seconds += elapsed
    vm_hwm, maxrss = peak_rss_mib()
    finite = all(math.isfinite(x) for x in losses)

    print(f"model: hidden {o.hidden}, intermediate {o.intermediate}, {o.layers} layers, "
          f"{o.heads}/{o.kv_heads} heads, vocab {o.vocab}; {o.method}"
          + (f" r={o.lora_rank} on {o.lora_targets}" if o.method == "lora" else "")
          + f" ({n_trainable} of {n_all} parameters trainable)")
    print(f"data: {o.data}, {int(100 * labelled / real + 0.5)}% of tokens carry a loss; batch "
          f"{o.batch} x up to {o.seq_len}; padded to the longest row (DataCollatorForSeq2Seq), "
          f"full logits + CrossEntropyLoss, {o.threads} threads, eager attention, "
          f"torch {torch.__version__} (transformers + PEFT re-implemented)")
    print(f"tokens/s: {int(tokens / seconds)} (real tokens, {o.steps} steps after "
          f"{o.warmup_steps} warm-up)")
    print(f"padding tokens: {padding} of {computed} computed")
    print(f"loss: {losses[0]:.4f} at step 1 (ln vocab = {math.log(o.vocab):.4f}), "
          f"{losses[-1]:.4f} at step {len(losses)}" + ("" if finite else " NOT FINITE"))
    print(f"peak RSS: {int(vm_hwm)} MiB (VmHWM; ru_maxrss {int(maxrss)} MiB)")
    return 0 if finite else 1


def main(argv):
    p = argparse.ArgumentParser(
        description="transformers LlamaForCausalLM (eager) + PEFT LoRA + Trainer step, "
                    "re-implemented in PyTorch; engine_bench's flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--lora_rank", type=int, default=16)
    p.add_argument("--lora_alpha", type=float, default=0.0, help="0: 2 x rank, as engine_bench")
    p.add_argument("--lora_targets", default=LORA_TARGETS)
    p.add_argument("--data", choices=["chat", "text"], default="chat")
    p.add_argument("--assistant_share", type=float, default=1.0 / 3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup_steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", action="store_true", help="print every step's loss and time")
    p.add_argument("--same_batch", action="store_true",
                   help="train every step on the first batch (the loss must fall)")
    p.add_argument("--check_fixture", default="",
                   help="a fixture dir (model/, logits0.safetensors, expected.jsonl): "
                        "compare this forward with transformers' numbers instead")
    p.add_argument("--lathe_logits", default="",
                   help="with --check_fixture: a Lathe `score --logits-out` file to compare too")
    o = p.parse_args(argv)
    if o.check_fixture:
        torch.set_num_threads(o.threads)
        return check_fixture(o.check_fixture, o.lathe_logits)
    return bench(o)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
