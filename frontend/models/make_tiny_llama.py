"""The tiny model real-engine tests run: Rotor's shipped tokenizer plus a random 2-layer Llama.

    ensure_tiny_llama(python)            # from anywhere (stdlib only): build once, return the folder
    python -m frontend.models.make_tiny_llama [--python PY]   # same, prints the folder

The folder is a standard Hugging Face model folder that vLLM loads offline:

    tokenizer.json, tokenizer_config.json, special_tokens_map.json   copied from rotor-mock/
    config.json              LlamaForCausalLM: vocab 4096, hidden 128, intermediate 256, 2 layers,
                             4 heads (head_dim 32), max_position_embeddings 4096
    generation_config.json   bos/eos/pad ids only (no sampling defaults that would override requests)
    model.safetensors        random weights, torch seed 0 (about 3 MB)
    rotor_tiny.json          written last: inputs hash, versions, and the chat-template check

It lives in `${ROTOR_CACHE:-~/.cache/rotor}/models/rotor-tiny-llama-<hash>/`, where the hash covers
the tokenizer artefact, the config below and this file, so a change to any of them builds a new
folder and an unchanged one is reused. The weights are written by a python that has torch and
transformers (the cached vLLM environment, worker/vllm_env.py), running this same file with
`--build DIR`; that step also checks that `transformers.AutoTokenizer` loads our tokenizer.json and
chat template and renders a few conversations exactly as `frontend.tokenizer.Tokenizer` does, and
records the result (`chat_template_parity`) — a difference fails the build, naming the case.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "rotor-mock"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SEED = 0
MARKER = "rotor_tiny.json"

# The shipped artefact's Llama config, with a context length a tiny engine on CPU can hold
# (Rotor's and the engine's context length then agree).
CONFIG = {**json.loads((SHIPPED / "config.json").read_text()), "max_position_embeddings": 4096}
GENERATION_CONFIG = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0}


def inputs_hash() -> str:
    """sha256 over everything the folder is made from (tokenizer files, config, this builder)."""
    digest = hashlib.sha256()
    for name in COPIED_FILES:
        digest.update(name.encode() + b"\0" + (SHIPPED / name).read_bytes() + b"\0")
    digest.update(json.dumps(CONFIG, sort_keys=True).encode())
    digest.update(json.dumps(GENERATION_CONFIG, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def model_dir() -> Path:
    root = Path(os.environ.get("ROTOR_CACHE") or Path.home() / ".cache" / "rotor").expanduser()
    return root / "models" / f"rotor-tiny-llama-{inputs_hash()[:16]}"


def ensure_tiny_llama(python: str | os.PathLike[str]) -> Path:
    """The tiny model's folder, built with `python` (needs torch, transformers, safetensors) unless
    already cached. Concurrent callers wait on a lock. Raises RuntimeError with the builder's output
    when the build fails."""
    target = model_dir()
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MARKER).is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        repo_root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([str(python), __file__, "--build", str(partial)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"building the tiny model failed (exit {proc.returncode}):\n"
                               + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:]))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target


# -- the build itself (runs under the python that has torch + transformers) -----------------------


def _build(out: Path) -> None:
    import safetensors.torch  # noqa: F401 - fail early with a clear import error
    import torch
    import transformers

    out.mkdir(parents=True)
    for name in COPIED_FILES:
        shutil.copyfile(SHIPPED / name, out / name)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")

    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(**{k: v for k, v in CONFIG.items()
                                         if k not in ("architectures", "model_type", "torch_dtype")})
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    parity = _chat_template_parity(out)
    (out / MARKER).write_text(json.dumps({
        "inputs_sha256": inputs_hash(), "seed": SEED, "torch": torch.__version__,
        "transformers": transformers.__version__, "chat_template_parity": parity}, indent=2) + "\n")
    if not parity["passed"]:
        raise SystemExit("transformers renders the chat template differently from Rotor:\n"
                         + json.dumps(parity, indent=2))
    print(out)


def _chat_template_parity(folder: Path) -> dict:
    """transformers' AutoTokenizer vs Rotor's Tokenizer on the conformance conversations: the
    rendered text and the ids must be equal."""
    import transformers

    from frontend.tokenizer import Tokenizer, normalize_tool_call_arguments
    from worker.conformance import CASES, rotor_token_ids

    hf = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ours = Tokenizer.load(str(folder))
    differences = []
    checked = 0
    for case in CASES:
        if case.kind == "chat":
            # vLLM hands transformers tool-call arguments parsed to mappings; so does Rotor.
            messages = normalize_tool_call_arguments(case.messages or [])
            theirs_text = hf.apply_chat_template(messages, tools=case.tools, tokenize=False,
                                                 add_generation_prompt=True)
            ours_text = ours.apply_chat_template(case.messages or [], tools=case.tools,
                                                 add_generation_prompt=True)
            theirs_ids = hf.encode(theirs_text, add_special_tokens=False)
        else:
            theirs_text = ours_text = case.prompt or ""
            theirs_ids = hf.encode(theirs_text, add_special_tokens=True)
        checked += 1
        ours_ids = rotor_token_ids(ours, case)
        if theirs_text != ours_text or theirs_ids != ours_ids:
            at = next((i for i, (a, b) in enumerate(zip(theirs_text, ours_text)) if a != b),
                      min(len(theirs_text), len(ours_text)))
            differences.append({"case": case.name, "text_equal": theirs_text == ours_text,
                                "ids_equal": theirs_ids == ours_ids, "char": at,
                                "transformers": theirs_text[max(at - 20, 0):at + 40],
                                "rotor": ours_text[max(at - 20, 0):at + 40]})
    return {"passed": not differences, "cases": checked, "tokenizer_class": type(hf).__name__,
            "differences": differences}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend.models.make_tiny_llama",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=None,
                        help="python with torch + transformers (default: the cached vLLM "
                             "environment's, built if needed)")
    parser.add_argument("--build", default=None, metavar="DIR",
                        help="(internal) write the folder to DIR with this python")
    args = parser.parse_args(argv)
    if args.build:
        _build(Path(args.build))
        return 0
    python = args.python
    if python is None:
        from worker import vllm_env
        python = str(vllm_env.ensure())
    print(ensure_tiny_llama(python))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):       # run as a file by the engine's python
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
