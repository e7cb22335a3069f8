"""Make the tokenizer artefact Rotor ships: ``frontend/models/rotor-mock/``.

    python -m frontend.models.make_tokenizer [--out DIR]

Trains a byte-level BPE (GPT-2 style: ``ByteLevel`` pre-tokenizer and decoder, vocabulary of
exactly 4096 ids including the added tokens) with the Hugging Face ``tokenizers`` library and
writes a standard Hugging Face model folder that loads in Rotor's ``frontend.tokenizer``, in
``transformers.PreTrainedTokenizerFast`` and in vLLM:

    tokenizer.json           the BPE (vocabulary, merges, added tokens, pipeline)
    tokenizer_config.json    PreTrainedTokenizerFast, special tokens, model_max_length, chat_template
    special_tokens_map.json  bos / eos / pad / additional special tokens
    config.json              a minimal LlamaForCausalLM config (vocab 4096, hidden 128, 2 layers,
                             4 heads, max_position_embeddings 131072): Rotor's context length now,
                             the tiny random-weight vLLM model later
    rotor_build.json         how the artefact was made (Python and tokenizers versions, corpus
                             size and sha256), so a rebuild can be checked for byte equality

Corpus (deterministic, nothing is downloaded):
  * the source files (code and docstrings) of the standard-library modules in ``STDLIB_MODULES``,
    read from the running interpreter; ``pydoc_data.topics`` is the Python reference manual as
    English prose;
  * generated agent-style text from a seeded RNG: tool definitions and tool calls as JSON
    (the Pi coding agent's ``read``/``bash``/``edit``/``write``), shell commands, file paths and
    short chat turns;
  * a fixed handful of non-English sentences, so common multi-byte characters get merges.
The stdlib part depends on the Python build (3.11.7 made the shipped artefact); ``rotor_build.json``
records the corpus sha256, and the same corpus with the same ``tokenizers`` version gives a
byte-identical ``tokenizer.json``. Training takes a few seconds on two cores.

Token ids 0..6 are the added tokens, in this order: ``<|endoftext|>`` (bos, pad), ``<|im_start|>``,
``<|im_end|>`` (eos; ChatML) are special; ``<tool_call>``, ``</tool_call>``, ``<tool_response>``,
``</tool_response>`` are normal added tokens (kept by ``skip_special_tokens``, as in Qwen2.5), so
tool-call parsers such as vLLM's ``hermes`` find them in the vocabulary.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

DEFAULT_OUT = Path(__file__).resolve().parent / "rotor-mock"

VOCAB_SIZE = 4096  # ids, added tokens included; above the mock engine's output ids 1000..1999
MAX_POSITION_EMBEDDINGS = 131072  # tokens

BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")  # ids 3..6

STDLIB_MODULES = (
    "pydoc_data.topics",
    "argparse",
    "textwrap",
    "json.decoder",
    "json.encoder",
    "http.client",
    "email.message",
    "dataclasses",
    "functools",
    "pathlib",
    "subprocess",
    "logging",
    "typing",
    "unittest.case",
    "asyncio.events",
    "shutil",
    "difflib",
    "enum",
    "collections",
    "string",
    "tempfile",
    "urllib.parse",
    "csv",
    "contextlib",
    "statistics",
)

MULTILINGUAL = (
    "Grüße aus München! Die Straße ist schön, aber es regnet heute.",
    "Où est la bibliothèque ? Je voudrais un café crème, s'il vous plaît.",
    "¿Dónde está la estación? El niño come una manzana pequeña.",
    "Привет, мир! Как дела? Это простой пример текста на русском языке.",
    "你好，世界！这是一个用于分词器训练的简单中文句子。",
    "こんにちは、世界！これはトークナイザーのための短い日本語の文です。",
    "안녕하세요, 세계! 이것은 토크나이저를 위한 짧은 문장입니다.",
    "Γειά σου Κόσμε! Αυτό είναι ένα απλό παράδειγμα.",
    "مرحبا بالعالم! هذا مثال بسيط على النص العربي.",
    "Emoji: 🚀 ✅ ❌ 🔥 👍 — “quotes”, ‘single’, ellipsis… and bullets • ★ → ←",
)

# The chat template (ChatML, Qwen2.5-like). Rendered by Jinja2 configured as Hugging Face
# transformers does (trim_blocks, lstrip_blocks, loopcontrols, its own tojson, raise_exception).
# Invariants:
#   * one turn per message, so rendering messages[:k] is a text prefix of messages[:k+1]
#     (prefix caching across the turns of an agent loop); tool results are one user turn each;
#   * content may be a string, null, or an array of {"type": "text"} parts (concatenated);
#     the parts loop is written as `for part in message['content']` inside
#     `for message in messages`, which is what vLLM's content-format detection looks for
#     ("openai": it then passes every content as an array of parts, null as []);
#   * tool-call arguments: a string renders as given, a mapping as compact JSON, so Pi's compact
#     string and the mapping vLLM parses from it render the same text.
CHAT_TEMPLATE = r"""{#- Rotor mock chat template: ChatML, Qwen2.5-like, one turn per message. -#}
{%- if tools %}
    {%- set tools_ns = namespace(text='# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>') %}
    {%- for tool in tools %}
        {%- set tools_ns.text = tools_ns.text + '\n' + (tool | tojson) %}
    {%- endfor %}
    {%- set tools_ns.text = tools_ns.text + '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' %}
    {%- if not (messages and messages[0]['role'] in ['system', 'developer']) %}
        {{- '<|im_start|>system\n' + tools_ns.text + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- set role = message['role'] %}
    {%- if message['content'] is undefined or message['content'] is none %}
        {%- set content = '' %}
    {%- elif message['content'] is string %}
        {%- set content = message['content'] %}
    {%- elif message['content'] is mapping %}
        {{- raise_exception("The content of a '" ~ role ~ "' message must be a string, null or an array of parts, not an object") }}
    {%- else %}
        {%- set content_ns = namespace(text='') %}
        {%- for part in message['content'] %}
            {%- if part is mapping and part['type'] == 'text' and part['text'] is string %}
                {%- set content_ns.text = content_ns.text + part['text'] %}
            {%- elif part is mapping and part['type'] == 'text' %}
                {{- raise_exception("A text part of a '" ~ role ~ "' message needs a string 'text'") }}
            {%- elif part is mapping %}
                {{- raise_exception("Content part type '" ~ part['type'] ~ "' is not supported in a '" ~ role ~ "' message: this model accepts only text parts") }}
            {%- else %}
                {{- raise_exception("Content parts of a '" ~ role ~ "' message must be objects with a 'type'") }}
            {%- endif %}
        {%- endfor %}
        {%- set content = content_ns.text %}
    {%- endif %}
    {%- if role == 'system' or role == 'developer' %}
        {{- '<|im_start|>system\n' + content }}
        {%- if loop.first and tools %}
            {{- '\n\n' + tools_ns.text }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif role == 'user' %}
        {{- '<|im_start|>user\n' + content + '<|im_end|>\n' }}
    {%- elif role == 'assistant' %}
        {{- '<|im_start|>assistant\n' + content }}
        {%- if message['tool_calls'] %}
            {%- for tool_call in message['tool_calls'] %}
                {%- if tool_call['function'] is defined %}
                    {%- set call = tool_call['function'] %}
                {%- else %}
                    {%- set call = tool_call %}
                {%- endif %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' + (call['name'] | tojson) + ', "arguments": ' }}
                {%- if not call['arguments'] %}
                    {{- '{}' }}
                {%- elif call['arguments'] is string %}
                    {{- call['arguments'] }}
                {%- else %}
                    {{- call['arguments'] | tojson(separators=(',', ':')) }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + content + '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- raise_exception("Unexpected message role '" ~ role ~ "': expected system, developer, user, assistant or tool") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


# --- corpus -------------------------------------------------------------------------------------


def stdlib_texts(modules: tuple[str, ...] = STDLIB_MODULES) -> Iterator[str]:
    """The source text of each module, in the given order (read, not imported)."""
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise RuntimeError(f"standard-library module {name!r} has no Python source here")
        yield Path(spec.origin).read_text(encoding="utf-8")


_PI_TOOLS = (
    ("read", "Read the contents of a file. Supports text files and images.", {"path": "string", "offset": "number", "limit": "number"}),
    ("bash", "Execute a bash command in the current working directory.", {"command": "string", "timeout": "number"}),
    ("edit", "Edit a file by replacing exact text. The oldText must match exactly.", {"path": "string", "oldText": "string", "newText": "string"}),
    ("write", "Write content to a file. Creates the file if it does not exist.", {"path": "string", "content": "string"}),
)
_WORDS = (
    "the file function test server request token cache block worker router prefix stream error "
    "config model prompt output input value list index queue event latency python json http "
    "check run build fix update add remove read write open close return import class def self"
).split()
_COMMANDS = (
    "ls -la", "git status", "git diff --stat", "pytest -q", "cat README.md", "grep -rn TODO src",
    "python -m pip list", "find . -name '*.py'", "echo hi", "make test", "wc -l", "head -n 20",
)
_DIRS = ("src", "tests", "frontend", "router", "worker", "docs", "scripts", "lib")
_EXTS = (".py", ".json", ".md", ".toml", ".txt", ".sh", ".ts")


def agent_texts(seed: int = 0, count: int = 3000) -> Iterator[str]:
    """Generated agent-loop text: tool schemas, tool calls (compact and spaced JSON), paths,
    shell commands and short chat turns. Deterministic for a given seed."""
    rng = random.Random(seed)
    for name, description, props in _PI_TOOLS:
        schema = {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": {k: {"type": v, "description": f"The {k} to use"} for k, v in props.items()},
                    "required": list(props)[:1],
                },
                "strict": False,
            },
        }
        yield json.dumps(schema, ensure_ascii=False)
    for _ in range(count):
        path = "/".join(rng.choice(_DIRS) for _ in range(rng.randint(1, 3)))
        path += "/" + "_".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2))) + rng.choice(_EXTS)
        command = rng.choice(_COMMANDS)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
        tool, _, props = rng.choice(_PI_TOOLS)
        args = {k: (path if k == "path" else command if k == "command" else sentence if v == "string" else rng.randint(1, 500))
                for k, v in props.items() if rng.random() < 0.8}
        separators = (",", ":") if rng.random() < 0.5 else (", ", ": ")
        yield (
            f"user\n{sentence}\nassistant\n<tool_call>\n"
            + json.dumps({"name": tool, "arguments": args}, separators=separators)
            + f"\n</tool_call>\nuser\n<tool_response>\n$ {command}\n{path}: {rng.randint(0, 9999)} lines\n</tool_response>\n"
        )


def corpus(seed: int = 0) -> list[str]:
    texts = list(stdlib_texts())
    texts.extend(agent_texts(seed))
    texts.extend(MULTILINGUAL * 20)
    return texts


def corpus_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


# --- training and the folder --------------------------------------------------------------------


def train(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A GPT-2 style byte-level BPE whose vocabulary (added tokens included) is vocab_size ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only: adds no tokens
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + TOOL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The trainer adds every listed token as special; the tool tokens are normal added tokens.
    data = json.loads(tokenizer.to_str())
    for added in data["added_tokens"]:
        if added["content"] in TOOL_TOKENS:
            added["special"] = False
    tokenizer = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    if tokenizer.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise RuntimeError(f"trained vocabulary has {tokenizer.get_vocab_size(with_added_tokens=True)} ids, not {vocab_size}")
    return tokenizer


def _added_token_entry(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def folder_files(tokenizer: Tokenizer) -> dict[str, dict]:
    """The JSON files of the model folder (tokenizer.json aside), as Hugging Face writes them."""
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS + TOOL_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(ids[t]): _added_token_entry(t, t in SPECIAL_TOKENS) for t in SPECIAL_TOKENS + TOOL_TOKENS},
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": CHAT_TEMPLATE,
    }
    special_tokens_map = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": ids[PAD_TOKEN],
    }
    return {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_tokens_map,
        "config.json": config,
    }


def write_folder(out: Path, tokenizer: Tokenizer, build: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Compact JSON (no pretty printing) keeps tokenizer.json small (about 110 KB).
    (out / "tokenizer.json").write_text(tokenizer.to_str(pretty=False) + "\n", encoding="utf-8")
    for name, data in folder_files(tokenizer).items():
        (out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "rotor_build.json").write_text(json.dumps(build, indent=2) + "\n", encoding="utf-8")


def build_info(texts: list[str], seed: int) -> dict:
    return {
        "script": "python -m frontend.models.make_tokenizer",
        "python": sys.version.split()[0],
        "tokenizers": tokenizers.__version__,
        "seed": seed,
        "corpus_texts": len(texts),
        "corpus_chars": sum(len(t) for t in texts),
        "corpus_sha256": corpus_sha256(texts),
        "stdlib_modules": list(STDLIB_MODULES),
    }


def make(out: Path, seed: int = 0) -> float:
    """Build the folder at `out`; returns the training time in seconds."""
    texts = corpus(seed)
    started = time.perf_counter()
    tokenizer = train(texts)
    seconds = time.perf_counter() - started
    write_folder(out, tokenizer, build_info(texts, seed))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frontend.models.make_tokenizer",
        description="Train Rotor's byte-level BPE tokenizer (vocabulary 4096) on a local, "
        "deterministic corpus and write a Hugging Face model folder (tokenizer.json, "
        "tokenizer_config.json with the chat template, special_tokens_map.json, config.json).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder to write (default: the shipped artefact, {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated agent text (default: 0)")
    args = parser.parse_args(argv)
    seconds = make(args.out, args.seed)
    size = (args.out / "tokenizer.json").stat().st_size
    print(f"wrote {args.out} (tokenizer.json {size / 1024:.0f} KiB, trained in {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
