#!/usr/bin/env python3
"""The SIREN ESU in PyTorch and in ONNX Runtime, timed on the network `compare` exports.

`compare` writes `esu.json` (the configuration, every parameter by name, one batch of inputs
and candle's click probabilities for it) and starts this script with the thread count its own
forwards use. The script builds the same network in PyTorch, checks that it gives candle's
probabilities, exports it to ONNX, loads it in ONNX Runtime and checks that too, then prints
one JSON line:

    {"ready": true, "torch_max_diff": ..., "onnx_max_diff": ..., "threads": N, ...}

or, when torch, onnxruntime or numpy cannot be imported, {"skipped": "<reason>"} (exit status
0, so that a machine without them still completes the comparison), or {"error": "..."}.
After "ready" it answers requests on standard input, one per line, so that `compare` can
interleave rounds of its own forwards with rounds of these and all four see the same load:

    torch N   ->  {"times": [seconds of N forwards]}
    onnx N    ->  {"times": [...]}
    quit (or end of input)

Install the pinned Python it needs with `scripts/bench-python.sh` (a venv in
target/bench-python, which `compare` finds by itself). By hand:

    target/bench-python/bin/python benches/torch_esu.py --json esu.json --threads 2
"""

import argparse
import json
import os
import sys
import tempfile
import time


def emit(obj):
    print(json.dumps(obj))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="esu.json written by compare")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    # Before torch loads its OpenMP runtime: the same thread count everywhere.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import importlib

    missing = []
    for name in ("torch", "onnxruntime", "numpy"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        emit({"skipped": f"{sys.executable} ({sys.version.split()[0]}) lacks "
              f"{', '.join(missing)}; scripts/bench-python.sh installs them"})
        return 0
    import onnxruntime
    import torch
    with open(args.json) as f:
        doc = json.load(f)
    return run(doc, args, torch, onnxruntime)


def build(doc, torch):
    import torch.nn.functional as F

    cfg = doc["config"]
    d, heads, layers, levels = cfg["dim"], cfg["heads"], cfg["layers"], cfg["levels"]

    def tensor(entry, dtype):
        return torch.tensor(entry["data"], dtype=dtype).reshape(entry["shape"])

    class Esu(torch.nn.Module):
        """The candle model's `Siren` backbone and head, forward only."""

        def __init__(self):
            super().__init__()
            self.names = {}
            for name, entry in doc["params"].items():
                key = name.replace(".", "_")
                self.names[name] = key
                self.register_buffer(key, tensor(entry, torch.float32))

        def p(self, name):
            return getattr(self, self.names[name])

        def emb(self, table, idx):
            return F.embedding(idx, self.p(f"{table}.weight"))

        def lin(self, x, name):
            return x @ self.p(f"{name}.weight").t() + self.p(f"{name}.bias")

        def ln(self, x, name):
            return F.layer_norm(x, (d,), self.p(f"{name}.weight"), self.p(f"{name}.bias"), 1e-5)

        def layer(self, x, bias, name, first):
            b, t, _ = x.shape
            qkv = self.lin(self.ln(x, f"{name}.ln1"), f"{name}.qkv")
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
            if first:
                q = q[:, :1]
            tq = q.shape[1]

            def split(m, n):
                return m.reshape(b, n, heads, d // heads).transpose(1, 2)

            s = split(q, tq) @ split(k, t).transpose(2, 3) * (1.0 / (d // heads) ** 0.5)
            att = torch.softmax(s + bias, dim=-1)
            ctx = (att @ split(v, t)).transpose(1, 2).reshape(b, tq, d)
            xq = x[:, :1] if first else x
            x = xq + self.lin(ctx, f"{name}.out")
            h = self.ln(x, f"{name}.ln2")
            x = x + self.lin(torch.relu(self.lin(h, f"{name}.ff1")), f"{name}.ff2")
            return x[:, 0] if first else x

        def forward(self, user, item, category, prefix, emb, r_item, r_cat, r_act, r_gap,
                    r_sb, r_depth, r_prefix, r_mask, c_item, c_cat, c_act, c_gap, c_mask):
            mm = self.lin(emb, "mm")
            tgt = self.emb("item", item) + self.emb("category", category) + mm
            tgt = tgt + self.p("target_type")
            tok = (self.emb("item", r_item) + self.emb("category", r_cat)
                   + self.emb("action", r_act) + self.emb("gap", r_gap)
                   + self.emb("sim_bucket", r_sb))
            for lv in range(levels):
                tgt = tgt + self.emb(f"prefix{lv + 1}", prefix[:, lv])
                tok = tok + self.emb(f"prefix{lv + 1}", r_prefix[..., lv])
            tok = tok + self.emb("depth", r_depth)
            x = self.ln(torch.cat([tgt[:, None], tok], 1), "ln_in")
            mask = torch.cat([torch.ones_like(r_mask[:, :1]), r_mask], 1)
            bias = ((mask - 1.0) * 1e9)[:, None, None, :]
            for lv in range(layers - 1):
                x = self.layer(x, bias, f"layer{lv}", False)
            interest = self.layer(x, bias, f"layer{layers - 1}", True)
            # The recent branch: DIN target attention with the first layer in factored form.
            q = torch.cat([self.emb("item", item), self.emb("category", category)], 1)
            keys = torch.cat([self.emb("item", c_item) + self.emb("action", c_act)
                              + self.emb("gap", c_gap), self.emb("category", c_cat)], 2)
            w = self.p("recent_att.0.weight")
            e = 2 * d
            w_q = w[:, :e] + w[:, 2 * e : 3 * e]
            w_k = w[:, e : 2 * e] - w[:, 2 * e : 3 * e]
            w_qk = w[:, 3 * e :]
            pre = (keys @ w_k.t() + (keys * q[:, None]) @ w_qk.t()
                   + (q @ w_q.t())[:, None] + self.p("recent_att.0.bias"))
            logits = self.lin(torch.relu(pre), "recent_att.1")[..., 0]
            wts = torch.softmax(logits + (c_mask - 1.0) * 1e9, dim=-1) * c_mask
            pooled = (wts[:, None] @ keys)[:, 0]
            feats = torch.cat([interest, self.emb("user", user), mm, q, pooled, q * pooled], 1)
            h = feats
            n = sum(1 for name in self.names if name.startswith("head.") and name.endswith(".weight"))
            for i in range(n):
                h = self.lin(h, f"head.{i}")
                if i + 1 < n:
                    h = torch.relu(h)
            return torch.sigmoid(h[:, 0])

    return Esu().eval()


def inputs(doc, torch):
    def t(entry, dtype):
        return torch.tensor(entry["data"], dtype=dtype).reshape(entry["shape"])

    i64, f32 = torch.int64, torch.float32
    x = doc["inputs"]
    r, c = x["seqs"]["retrieved"], x["seqs"]["recent"]
    return (t(x["user"], i64), t(x["item"], i64), t(x["category"], i64), t(x["prefix"], i64),
            t(x["emb"], f32), t(r["item"], i64), t(r["category"], i64), t(r["action"], i64),
            t(r["gap"], i64), t(r["sim_bucket"], i64), t(r["depth"], i64), t(r["prefix"], i64),
            t(r["mask"], f32), t(c["item"], i64), t(c["category"], i64), t(c["action"], i64),
            t(c["gap"], i64), t(c["mask"], f32))


def times(f, runs):
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        out.append(time.perf_counter() - start)
    return out


NAMES = ["user", "item", "category", "prefix", "emb", "r_item", "r_cat", "r_act", "r_gap",
         "r_sb", "r_depth", "r_prefix", "r_mask", "c_item", "c_cat", "c_act", "c_gap", "c_mask"]


def export_onnx(model, xs, path, torch):
    """The model as ONNX at `path`: the exporter torch recommends (torch.export, dynamo), else
    the TorchScript one."""
    try:
        torch.onnx.export(model, xs, path, input_names=NAMES, output_names=["probs"],
                          dynamo=True, opset_version=18)
        return "dynamo"
    except Exception:  # noqa: BLE001 - older torch, or a graph the new exporter rejects
        torch.onnx.export(model, xs, path, input_names=NAMES, output_names=["probs"],
                          dynamo=False, opset_version=17)
        return "torchscript"


def run(doc, args, torch, ort):
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model = build(doc, torch)
    xs = inputs(doc, torch)
    want = torch.tensor(doc["candle_probs"])
    with torch.inference_mode():
        torch_diff = float((model(*xs) - want).abs().max())
    if not torch_diff <= 1e-4:
        emit({"error": f"PyTorch's probabilities differ from candle's by {torch_diff}"})
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/esu.onnx"
        exporter = export_onnx(model, xs, path, torch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    # By name: an exporter may drop an input the graph does not read.
    wanted = {i.name for i in sess.get_inputs()}
    feed = {n: v.numpy() for n, v in zip(NAMES, xs) if n in wanted}
    onnx_diff = float(abs(sess.run(None, feed)[0] - want.numpy()).max())
    if not onnx_diff <= 1e-4:
        emit({"error": f"ONNX Runtime's probabilities differ from candle's by {onnx_diff}"})
        return 1

    def torch_forward():
        with torch.inference_mode():
            model(*xs)

    forwards = {"torch": torch_forward, "onnx": lambda: sess.run(None, feed)}
    for f in forwards.values():
        f()
    emit({"ready": True, "threads": args.threads, "torch_max_diff": torch_diff,
          "onnx_max_diff": onnx_diff, "onnx_exporter": exporter,
          "torch_version": torch.__version__, "onnxruntime_version": ort.__version__})
    for line in sys.stdin:
        what = line.split()
        if not what or what[0] == "quit":
            break
        if what[0] not in forwards or len(what) != 2 or not what[1].isdigit():
            emit({"error": f"unknown request {line.strip()!r}"})
            return 1
        emit({"times": times(forwards[what[0]], int(what[1]))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
