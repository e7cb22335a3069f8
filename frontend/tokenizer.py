"""Rotor's one tokenization path: Hugging Face ``tokenizers`` plus the model's chat template.

A model folder is any local Hugging Face model folder with a ``tokenizer.json`` (the default is the
small tokenizer the repository makes and ships, ``frontend/models/rotor-mock``). Chat templates are
rendered with Jinja2 configured exactly as Hugging Face transformers configures it, so the text
(and so the token ids) equals what transformers and vLLM produce for the same request.

    tok = Tokenizer.load(model_path)           # at start-up, never inside a handler
    prompt = tok.apply_chat_template(messages, tools=tools)
    ids = tok.encode(prompt)                   # encode_batch in a thread for long prompts
    detok = tok.detokenizer()                  # one per stream
    text = detok.push(new_ids) ... detok.flush()

Nothing is downloaded: a name like ``org/model`` is only looked up in the local Hugging Face cache.
"""

from __future__ import annotations

import codecs
import re
import hashlib
import importlib.resources
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import decoders as hf_decoders

DEFAULT_MODEL_PATH: str = str(importlib.resources.files("frontend.models").joinpath("rotor-mock"))
DEFAULT_CONTEXT_LENGTH = 8192  # tokens, when neither config.json nor tokenizer_config.json says
_MAX_SANE_CONTEXT = 1 << 24  # tokens; transformers uses 1e30 for "model_max_length not set"

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CONFIG_FILE = "config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# The special-token attributes transformers passes to chat templates (its special_tokens_map).
_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateError(ValueError):
    """A chat template rejected the request (bad role, non-text part, ...): a 400, not a 500."""


# --- locating a model folder --------------------------------------------------------------------


def resolve_model_path(path: str | None) -> str:
    """The absolute model folder for ``--model-path``: None means the shipped default; a local
    folder is used as is; ``org/name`` is looked up in the local Hugging Face cache (never
    downloaded). Raises FileNotFoundError naming the path when nothing is found."""
    if path is None:
        return DEFAULT_MODEL_PATH
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local.resolve())
    cached = _hf_cache_snapshot(path)
    if cached is not None:
        return str(cached)
    raise FileNotFoundError(
        f"model path {path!r} is not a local folder and not in the local Hugging Face cache "
        "(Rotor never downloads models)"
    )


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    repo_dir = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if repo_dir.is_dir() else []
    return snapshots[-1] if snapshots else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


# --- chat template rendering, as Hugging Face transformers does it --------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` tag (assistant-mask tracking), which
    some real templates use; here it only renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: no HTML escaping (unlike Jinja's own), non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template with transformers' Jinja2 environment: sandboxed and immutable,
    trim_blocks, lstrip_blocks, loop controls, its tojson, raise_exception and strftime_now."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"chat template does not compile: {exc}") from exc


def normalize_tool_call_arguments(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """vLLM's `_postprocess_messages`: an assistant tool call's `arguments` JSON string becomes a
    mapping (null or "" becomes {}), so templates see what they see inside vLLM. A string that is
    not JSON is left as is. Messages that need no change are passed through, never mutated."""
    out: list[Mapping[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TemplateError(f"each message must be an object, got {type(message).__name__}")
        calls = message.get("tool_calls")
        if message.get("role") != "assistant" or not isinstance(calls, list) or not calls:
            out.append(message)
            continue
        new_calls = []
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping):
                new_calls.append(call)
                continue
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            elif not arguments:
                arguments = {}
            new_calls.append({**call, "function": {**function, "arguments": arguments}})
        out.append({**message, "tool_calls": new_calls})
    return out


# --- incremental detokenization -----------------------------------------------------------------


class IncrementalDetokenizer(Protocol):
    """One per stream. Concatenating every `push` and the final `flush` equals
    `Tokenizer.decode(all ids)`; a multi-byte character split across tokens is held back until
    complete. Each push costs O(new tokens)."""

    def push(self, ids: Sequence[int]) -> str: ...

    def flush(self) -> str: ...


class ByteLevelDetokenizer:
    """For byte-level BPE decoders (GPT-2, Llama 3, Qwen, the shipped model): each id maps to fixed
    bytes, and an incremental UTF-8 decoder with errors='replace' holds back incomplete characters
    and replaces invalid bytes exactly as the Rust decoder's from_utf8_lossy does."""

    def __init__(self, token_bytes: Sequence[bytes], skip_ids: frozenset[int]) -> None:
        self._token_bytes = token_bytes  # id -> bytes; b"" for unknown ids
        self._skip_ids = skip_ids
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Sequence[int]) -> str:
        table, skip, n = self._token_bytes, self._skip_ids, len(self._token_bytes)
        data = b"".join(table[i] for i in ids if 0 <= i < n and i not in skip)
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class WindowDetokenizer:
    """For any other decoder (SentencePiece Metaspace, byte fallback, WordPiece): vLLM's prefix /
    read offsets. Text is decoded over a short window of recent ids; new text is released once it
    does not end in U+FFFD (an incomplete character). Cost per push: O(window + new tokens)."""

    # ids: release text even though it still ends in U+FFFD once this many are held (the bytes are
    # invalid, not incomplete); bounds the window, so a stream of garbage stays O(window) per push.
    _MAX_HELD = 256

    def __init__(self, tokenizer: tokenizers.Tokenizer, skip_special_tokens: bool) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []  # window: ids[0:read] were released, ids[read:] are held back
        self._read = 0

    def push(self, ids: Sequence[int]) -> str:
        self._ids.extend(ids)
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        prefix = self._tok.decode(self._ids[: self._read], skip_special_tokens=self._skip)
        text = self._tok.decode(self._ids, skip_special_tokens=self._skip)
        held = len(self._ids) - self._read
        if len(text) <= len(prefix):
            return ""
        if not final and text.endswith("\ufffd") and held < self._MAX_HELD:
            return ""
        # Keep the last released ids as left context for the next window (leading-space rules).
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        return text[len(prefix):]


# --- the tokenizer ------------------------------------------------------------------------------


def splits_exactly(tokenizer_json: bytes, added: Mapping[int, Any]) -> bool:
    """Whether encoding a text piece by piece between its added tokens gives exactly the ids of
    encoding it whole. True when added tokens are matched on the raw text and nothing couples
    neighbouring pieces: no normalizer, a byte-level pre-tokenizer without a prefix space, and
    added tokens without strip or word-boundary rules. The check is strict; anything else encodes
    whole."""
    spec = json.loads(tokenizer_json)
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", True)
            and all(not (t.lstrip or t.rstrip or t.single_word or t.normalized)
                    for t in added.values()))


class SegmentEncoder:
    """Encodes a text piece by piece between added tokens (`<|im_start|>`, ...), caching pieces.

    A chat prompt repeats most of itself across requests: system prompt, tool list, earlier
    turns. Added tokens split the input before the model runs, so each piece encodes the same on
    its own, and a repeated one is looked up instead of encoded again (the frontend's largest
    per-request cost before this). Only built where `splits_exactly` holds."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, added: Mapping[str, int],
                 max_pieces: int = 4096):
        self._tok = tokenizer
        self._added = dict(added)
        longest_first = sorted(added, key=len, reverse=True)   # leftmost-longest, as tokenizers
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self._cache: OrderedDict[str, list[int]] = OrderedDict()   # piece -> ids, LRU
        self._max = max_pieces

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for index, piece in enumerate(self._split.split(text)):
            if index % 2:                                 # an added token
                ids.append(self._added[piece])
            elif piece:
                cached = self._cache.get(piece)
                if cached is None:
                    cached = self._tok.encode(piece, add_special_tokens=False).ids
                    self._cache[piece] = cached
                    if len(self._cache) > self._max:
                        self._cache.popitem(last=False)
                else:
                    self._cache.move_to_end(piece)
                ids.extend(cached)
        return ids


class Tokenizer:
    """A loaded model folder: the BPE, the compiled chat template(s), special tokens, context length."""

    def __init__(
        self,
        model_path: str,
        tokenizer: tokenizers.Tokenizer,
        tokenizer_json: bytes,
        chat_templates: Mapping[str, str],
        special_tokens: Mapping[str, str],
        context_length: int,
        config_eos_ids: Iterable[int] = (),
    ) -> None:
        self._model_path = model_path
        self._tok = tokenizer
        self._chat_template_sources = dict(chat_templates)  # name -> source; "default" first
        self._compiled: dict[str, jinja2.Template] = {
            name: compile_chat_template(src) for name, src in self._chat_template_sources.items()
        }
        self._special_tokens = dict(special_tokens)  # e.g. {"bos_token": "<|endoftext|>", ...}
        self._context_length = context_length
        self._sha256 = _fingerprint(tokenizer_json, self._chat_template_sources, self._special_tokens)

        eos = self._special_tokens.get("eos_token")
        self._eos_token_id = tokenizer.token_to_id(eos) if eos is not None else None
        config_eos = [i for i in config_eos_ids if isinstance(i, int)]
        if self._eos_token_id is None and config_eos:
            self._eos_token_id = config_eos[0]
        self._stop_token_ids = frozenset(
            ([self._eos_token_id] if self._eos_token_id is not None else []) + config_eos
        )

        added = tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._segments = (SegmentEncoder(tokenizer, {t.content: i for i, t in added.items()})
                          if splits_exactly(tokenizer_json, added) else None)
        self._token_bytes = _byte_level_table(tokenizer) if isinstance(tokenizer.decoder, hf_decoders.ByteLevel) else None

    @classmethod
    def load(cls, model_path: str | None = None) -> Tokenizer:
        """Load a model folder (None: the shipped default). Raises FileNotFoundError naming the
        missing folder or tokenizer.json, ValueError for a file that cannot be used."""
        folder = Path(resolve_model_path(model_path))
        tokenizer_file = folder / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: {folder} is not a Hugging Face model folder with a fast "
                "tokenizer (Rotor needs tokenizer.json)"
            )
        tokenizer_json = tokenizer_file.read_bytes()
        try:
            tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # the Rust error type is not exported; re-raise with the file
            raise ValueError(f"{tokenizer_file} cannot be loaded by tokenizers: {exc}") from exc

        config_file = folder / TOKENIZER_CONFIG_FILE
        tokenizer_config = _read_json(config_file) if config_file.is_file() else {}
        model_config = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}

        templates = _chat_templates(folder, tokenizer_config)
        special_tokens = _special_tokens(tokenizer_config)
        return cls(
            model_path=str(folder),
            tokenizer=tokenizer,
            tokenizer_json=tokenizer_json,
            chat_templates=templates,
            special_tokens=special_tokens,
            context_length=_context_length(model_config, tokenizer_config),
            config_eos_ids=_as_id_list(model_config.get("eos_token_id")),
        )

    # -- properties --

    @property
    def model_path(self) -> str:
        return self._model_path

    @property
    def sha256(self) -> str:
        """Hex sha256 over tokenizer.json, the chat template(s) and the special-token strings:
        workers register it; the frontend refuses a worker whose hash differs."""
        return self._sha256

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """The eos token and config.json's eos_token_id(s): generation ends on any of them."""
        return self._stop_token_ids

    @property
    def eos_token(self) -> str | None:
        return self._special_tokens.get("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self._special_tokens.get("bos_token")

    @property
    def bos_token_id(self) -> int | None:
        bos = self.bos_token
        return self._tok.token_to_id(bos) if bos is not None else None

    @property
    def context_length(self) -> int:
        """Tokens: config.json max_position_embeddings, else a sane tokenizer_config
        model_max_length, else DEFAULT_CONTEXT_LENGTH."""
        return self._context_length

    @property
    def chat_template(self) -> str | None:
        """The default chat template source (None if the folder has none)."""
        return self._chat_template_sources.get("default")

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    # -- encoding and decoding --

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in the text (e.g. from a chat template)
        become their single ids. add_special_tokens applies tokenizer.json's post-processor
        (for the shipped model it adds nothing). Pieces between added tokens are cached when
        that is exact for this tokenizer (see SegmentEncoder)."""
        if self._segments is not None and not add_special_tokens:
            return self._segments.encode(text)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Encode several texts; releases the GIL, so run it in a thread for long prompts."""
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        """A fresh incremental detokenizer for one stream."""
        if self._token_bytes is not None:
            return ByteLevelDetokenizer(self._token_bytes, self._special_ids if skip_special_tokens else frozenset())
        return WindowDetokenizer(self._tok, skip_special_tokens)

    # -- chat template --

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render OpenAI-shaped messages to the prompt text, as transformers' apply_chat_template
        (tokenize=False) does inside vLLM: tool-call argument strings are parsed to mappings first
        (vLLM does this), the special tokens are template variables, extra kwargs
        (chat_template_kwargs, e.g. enable_thinking) are passed through. A template's
        raise_exception, a bad variable or a wrongly typed value raises TemplateError."""
        template = self._select_template(tools)
        variables: dict[str, Any] = {**self._special_tokens, **template_kwargs}
        try:
            return template.render(
                messages=normalize_tool_call_arguments(messages),
                tools=list(tools) if tools is not None else None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError) as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc

    def _select_template(self, tools: Sequence[Mapping[str, Any]] | None) -> jinja2.Template:
        # transformers' choice among named templates: "tool_use" when tools are given, else "default".
        if tools and "tool_use" in self._compiled:
            return self._compiled["tool_use"]
        if "default" in self._compiled:
            return self._compiled["default"]
        if not self._compiled:
            raise TemplateError(f"the model at {self._model_path} has no chat template; use the completions API")
        raise TemplateError(
            f"the model at {self._model_path} has chat templates {sorted(self._compiled)} but none named 'default'"
        )


# --- loading helpers ----------------------------------------------------------------------------


def _chat_templates(folder: Path, tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """name -> template source. As transformers: a chat_template.jinja file wins over
    tokenizer_config.json; its chat_template is a string or a list of {"name", "template"}."""
    jinja_file = folder / CHAT_TEMPLATE_FILE
    templates: dict[str, str] = {}
    raw = tokenizer_config.get("chat_template")
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)):
                raise ValueError(f"{folder / TOKENIZER_CONFIG_FILE}: chat_template list entries need 'name' and 'template' strings")
            templates[entry["name"]] = entry["template"]
    elif raw is not None:
        raise ValueError(f"{folder / TOKENIZER_CONFIG_FILE}: chat_template must be a string or a list of named templates")
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    if "default" in templates:
        templates = {"default": templates.pop("default"), **templates}
    return templates


def _special_tokens(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _SPECIAL_TOKEN_NAMES:
        value = tokenizer_config.get(name)
        if isinstance(value, Mapping):  # {"__type": "AddedToken", "content": ...}
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def _context_length(model_config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> int:
    for config in (model_config, model_config.get("text_config") or {}):
        value = config.get("max_position_embeddings") if isinstance(config, Mapping) else None
        if isinstance(value, int) and value > 0:
            return value
    value = tokenizer_config.get("model_max_length")
    if isinstance(value, (int, float)) and 0 < value <= _MAX_SANE_CONTEXT:
        return int(value)
    return DEFAULT_CONTEXT_LENGTH


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _fingerprint(tokenizer_json: bytes, templates: Mapping[str, str], special_tokens: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(b"tokenizer.json\0")
    digest.update(tokenizer_json)
    for name in sorted(templates):
        digest.update(b"\0chat_template\0" + name.encode() + b"\0" + templates[name].encode("utf-8"))
    digest.update(b"\0special_tokens\0" + json.dumps(special_tokens, sort_keys=True).encode())
    return digest.hexdigest()


def _byte_level_table(tokenizer: tokenizers.Tokenizer) -> list[bytes]:
    """id -> the bytes the ByteLevel decoder gives for that token alone: each character mapped back
    through GPT-2's byte <-> unicode table, or the token's own UTF-8 if a character is not in it
    (added tokens such as "<|im_start|>" or ones with spaces), exactly as the Rust decoder does."""
    char_to_byte = {c: b for b, c in _gpt2_bytes_to_unicode().items()}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values(), default=-1) + 1)
    for token, idx in vocab.items():
        try:
            table[idx] = bytes(char_to_byte[c] for c in token)
        except KeyError:
            table[idx] = token.encode("utf-8")
    return table


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))
