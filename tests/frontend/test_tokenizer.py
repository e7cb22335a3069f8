"""The one tokenization path (frontend/tokenizer.py) and the shipped tokenizer artefact."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import jinja2.nodes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.models import make_tokenizer
from frontend.tokenizer import (
    DEFAULT_MODEL_PATH,
    ByteLevelDetokenizer,
    TemplateError,
    Tokenizer,
    WindowDetokenizer,
    compile_chat_template,
    resolve_model_path,
)

SHIPPED = Path(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load()


# --- factories -----------------------------------------------------------------------------------


def make_tool(name: str = "bash", **overrides) -> dict:
    function = {
        "name": name,
        "description": "Execute a bash command.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        "strict": False,
    }
    function.update(overrides)
    return {"type": "function", "function": function}


def make_tool_call(call_id: str = "call_1", name: str = "bash", arguments: object = '{"command":"echo hi"}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def pi_conversation() -> list[dict]:
    """What the Pi coding agent sends on its second request of a tool loop."""
    return [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": [{"type": "text", "text": "Say hi"}, {"type": "text", "text": " in bash."}]},
        {"role": "assistant", "content": None, "tool_calls": [make_tool_call()]},
        {"role": "tool", "content": "hi", "tool_call_id": "call_1"},
    ]


def copy_model(tmp_path: Path, **config_overrides) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    if config_overrides:
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config.update(config_overrides)
        path.write_text(json.dumps(config))
    return folder


# --- the artefact --------------------------------------------------------------------------------


def test_artefact_is_a_standard_hf_folder():
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        assert (SHIPPED / name).is_file(), name
    assert (SHIPPED / "tokenizer.json").stat().st_size < 400_000
    tokenizer_config = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["add_bos_token"] is False
    assert tokenizer_config["chat_template"] == make_tokenizer.CHAT_TEMPLATE
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (4096, 128, 2, 4)
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 2)


def test_vocabulary_and_special_tokens(tok):
    assert tok.vocab_size == 4096  # above the mock engine's output ids 1000..1999
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.stop_token_ids == frozenset({2})
    assert tok.context_length == 131072
    assert tok.model_path == str(SHIPPED)
    for token, expected_id in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2), ("<tool_call>", 3),
                               ("</tool_call>", 4), ("<tool_response>", 5), ("</tool_response>", 6)]:
        assert tok.encode(token) == [expected_id]
        assert tok.token_to_id(token) == expected_id


def test_special_tokens_are_single_ids_inside_text(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == 1 and 2 in ids
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.decode(ids) == "user\nhi\n"  # special tokens skipped
    assert tok.decode(tok.encode("<tool_call>x</tool_call>")) == "<tool_call>x</tool_call>"  # not special: kept
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")  # no BOS is added


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Grüße, café, naïve — 你好，世界！ こんにちは 🚀👍🏽 \u0301combining",
        'def f(x: int) -> dict:\n    return {"a": [1, 2.5, None], "b": "\\t"}  # comment\n\t\n',
        "",
        "   leading and trailing spaces   \n\n",
    ],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_encode_batch_equals_encode(tok):
    texts = ["hello world", "x" * 1000, "", "日本語 text"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_token_counts_are_realistic(tok):
    english = ("You are an expert coding assistant. You help users by reading files, executing commands, "
               "editing code, and writing new files. ") * 20
    assert 3.0 < len(english) / len(tok.encode(english)) < 6.0  # characters per token


def test_make_tokenizer_is_reproducible(tmp_path):
    build = json.loads((SHIPPED / "rotor_build.json").read_text())
    texts = make_tokenizer.corpus(build["seed"])
    if make_tokenizer.corpus_sha256(texts) != build["corpus_sha256"] or make_tokenizer.tokenizers.__version__ != build["tokenizers"]:
        pytest.skip(f"corpus or tokenizers differ from the build of the shipped artefact (Python {build['python']}, "
                    f"tokenizers {build['tokenizers']}); byte equality is only promised for the same inputs")
    make_tokenizer.make(tmp_path)  # trains in about a second
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "rotor_build.json"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_make_tokenizer_help(capsys):
    with pytest.raises(SystemExit) as exc:
        make_tokenizer.main(["--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


# --- the chat template ---------------------------------------------------------------------------

EXPECTED_PI = (
    "<|im_start|>system\n"
    "You are a coding agent.\n"
    "\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "bash", "description": "Execute a bash command.", '
    '"parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}, '
    '"strict": false}}\n'
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "Say hi in bash.<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<tool_call>\n"
    '{"name": "bash", "arguments": {"command":"echo hi"}}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "hi\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_pi_conversation_renders_exactly(tok):
    assert tok.apply_chat_template(pi_conversation(), tools=[make_tool()]) == EXPECTED_PI


def test_no_tools_no_system():
    tok = Tokenizer.load()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_tools_without_system_message_get_their_own_system_turn(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=[make_tool()], add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\n# Tools\n\n")
    assert text.endswith("</tool_call><|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")


def test_developer_is_treated_as_system(tok):
    as_system = tok.apply_chat_template([{"role": "system", "content": "rules"}], tools=[make_tool()])
    as_developer = tok.apply_chat_template([{"role": "developer", "content": "rules"}], tools=[make_tool()])
    assert as_system == as_developer


def test_array_parts_equal_string_content(tok):
    for role in ("system", "user", "assistant", "tool"):
        as_string = tok.apply_chat_template([{"role": role, "content": "first part, second part"}])
        as_parts = tok.apply_chat_template(
            [{"role": role, "content": [{"type": "text", "text": "first part, "}, {"type": "text", "text": "second part"}]}]
        )
        assert as_string == as_parts
    # null, missing, "" and [] (vLLM passes null as []) all render as empty content
    renders = {tok.apply_chat_template([{"role": "assistant", **extra}]) for extra in
               ({"content": None}, {}, {"content": ""}, {"content": []})}
    assert renders == {"<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"}


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"type": "image_url", "image_url": {"url": "data:..."}}], "image_url"),
        ([{"type": "text", "text": 5}], "string 'text'"),
        (["bare string part"], "objects with a 'type'"),
        ({"type": "text", "text": "an object, not a list"}, "not an object"),
    ],
)
def test_bad_content_raises_template_error(tok, content, message):
    with pytest.raises(TemplateError, match=message):
        tok.apply_chat_template([{"role": "user", "content": content}])


def test_unknown_role_raises_template_error(tok):
    with pytest.raises(TemplateError, match="role 'narrator'"):
        tok.apply_chat_template([{"role": "narrator", "content": "hi"}])
    assert issubclass(TemplateError, ValueError)  # the frontend answers 400


def test_template_type_errors_become_template_errors(tok):
    with pytest.raises(TemplateError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}, 5])
    with pytest.raises(TemplateError):
        tok.apply_chat_template([{"role": "user", "content": 5}])


def test_tool_call_arguments_string_and_mapping_render_the_same(tok):
    def render(arguments):
        messages = [{"role": "assistant", "content": None, "tool_calls": [make_tool_call(arguments=arguments)]}]
        return tok.apply_chat_template(messages, add_generation_prompt=False)

    expected = '<|im_start|>assistant\n<tool_call>\n{"name": "bash", "arguments": {"command":"é <b>"}}\n</tool_call><|im_end|>\n'
    assert render('{"command":"é <b>"}') == expected  # Pi: compact string
    assert render('{"command": "\\u00e9 <b>"}') == expected  # spaced, escaped: parsed as vLLM does
    assert render({"command": "é <b>"}) == expected  # already a mapping
    assert render("not json") == expected.replace('{"command":"é <b>"}', "not json")
    assert render(None) == render("") == expected.replace('{"command":"é <b>"}', "{}")


def test_content_and_several_tool_calls(tok):
    messages = [{"role": "assistant", "content": "Let me look.", "tool_calls": [
        make_tool_call("a", "read", '{"path":"x.py"}'), make_tool_call("b", "bash", '{"command":"ls"}')]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>assistant\nLet me look.\n"
        '<tool_call>\n{"name": "read", "arguments": {"path":"x.py"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "bash", "arguments": {"command":"ls"}}\n</tool_call><|im_end|>\n'
    )


def test_apply_chat_template_does_not_mutate_messages(tok):
    messages = pi_conversation()
    before = json.dumps(messages)
    tok.apply_chat_template(messages, tools=[make_tool()])
    assert json.dumps(messages) == before


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text), max_size=3)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, st.one_of(_text, _parts)),
    st.builds(lambda c: {"role": "assistant", "content": c}, st.one_of(_text, st.none())),
    st.builds(lambda c, args: {"role": "assistant", "content": c, "tool_calls": [make_tool_call(arguments=json.dumps({"x": args}, separators=(",", ":")))]},
              st.one_of(st.none(), _text), _text),
    st.builds(lambda c: {"role": "tool", "content": c, "tool_call_id": "call_1"}, _text),
    st.builds(lambda c: {"role": "system", "content": c}, _text),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=_text, rest=st.lists(_message, min_size=1, max_size=6), with_tools=st.booleans())
def test_rendering_is_prefix_stable(tok, system, rest, with_tools):
    """messages[:k] renders to a text prefix of messages[:k+1]: the prefix cache survives turns."""
    messages = [{"role": "system", "content": system}, *rest]
    tools = [make_tool(), make_tool("read")] if with_tools else None
    renders = [tok.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=False) for k in range(1, len(messages) + 1)]
    for shorter, longer in zip(renders, renders[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    # and the token ids of the shorter render are a prefix of the longer's (turns end in <|im_end|>\n)
    assert tok.encode(renders[-1])[: len(tok.encode(renders[0]))] == tok.encode(renders[0])


def test_rendering_is_deterministic(tok):
    renders = {tok.apply_chat_template(pi_conversation(), tools=[make_tool()]) for _ in range(3)}
    assert renders == {EXPECTED_PI}


def test_jinja_configured_as_hugging_face():
    template = compile_chat_template(
        "{{ x | tojson }}|{{ x | tojson(indent=1) }}\n"
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}\n"
        "  {% if true %}\nlstrip{% endif %}\n"
        "{{ strftime_now('%Y') | length }}{% generation %}G{% endgeneration %}"
    )
    out = template.render(x={"a": "<é&>"})
    assert out == '{"a": "<é&>"}|{\n "a": "<é&>"\n}\n01lstrip4G'  # no HTML escaping; trim_blocks, lstrip_blocks
    with pytest.raises(jinja2.exceptions.SecurityError):
        compile_chat_template("{{ x.append(1) }}").render(x=[])  # immutable sandbox


def test_template_shape_is_detected_as_openai_content_by_vllm():
    """vLLM passes content as arrays of parts to templates that loop over message['content'] inside
    a loop over messages; otherwise it joins text parts with newlines, which would not match."""
    ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(make_tokenizer.CHAT_TEMPLATE)
    message_vars = {loop.target.name for loop in ast.find_all(jinja2.nodes.For)
                    if isinstance(loop.iter, jinja2.nodes.Name) and loop.iter.name == "messages"}
    content_loops = [loop for loop in ast.find_all(jinja2.nodes.For)
                     if isinstance(loop.iter, jinja2.nodes.Getitem) and isinstance(loop.iter.node, jinja2.nodes.Name)
                     and loop.iter.node.name in message_vars and isinstance(loop.iter.arg, jinja2.nodes.Const)
                     and loop.iter.arg.value == "content"]
    assert message_vars == {"message"} and len(content_loops) == 1


def test_chat_template_kwargs_are_template_variables(tmp_path):
    folder = copy_model(tmp_path, chat_template="{{ bos_token }}|{{ eos_token }}|{{ enable_thinking }}")
    tok = Tokenizer.load(str(folder))
    assert tok.apply_chat_template([], enable_thinking=False) == "<|endoftext|>|<|im_end|>|False"


# --- loading other model folders (--model-path) --------------------------------------------------


def test_load_another_folder_with_a_different_template(tmp_path, tok):
    folder = copy_model(tmp_path, chat_template="{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    other = Tokenizer.load(str(folder))
    assert other.model_path == str(folder.resolve())
    assert other.apply_chat_template([{"role": "user", "content": "hi"}]) == "[user]hi"
    assert other.encode("hello world") == tok.encode("hello world")
    assert other.sha256 != tok.sha256


def test_sha256_is_stable_and_covers_tokenizer_json(tmp_path, tok):
    assert Tokenizer.load(str(copy_model(tmp_path))).sha256 == tok.sha256
    folder = tmp_path / "model"
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"][0]["content"] = "<|bos|>"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert Tokenizer.load(str(folder)).sha256 != tok.sha256


def test_chat_template_jinja_file_wins(tmp_path):
    folder = copy_model(tmp_path)
    (folder / "chat_template.jinja").write_text("from the jinja file")
    assert Tokenizer.load(str(folder)).apply_chat_template([]) == "from the jinja file"


def test_named_templates_list(tmp_path):
    folder = copy_model(tmp_path, chat_template=[{"name": "default", "template": "plain"},
                                                 {"name": "tool_use", "template": "tools: {{ tools | length }}"}])
    tok = Tokenizer.load(str(folder))
    assert tok.apply_chat_template([]) == "plain"
    assert tok.apply_chat_template([], tools=[make_tool()]) == "tools: 1"
    assert tok.chat_template == "plain"


def test_folder_without_chat_template(tmp_path):
    folder = copy_model(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.load(str(folder))
    assert tok.chat_template is None
    with pytest.raises(TemplateError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_context_length_fallbacks(tmp_path):
    folder = copy_model(tmp_path, model_max_length=2048)
    (folder / "config.json").unlink()
    assert Tokenizer.load(str(folder)).context_length == 2048
    copy = copy_model(tmp_path / "b", model_max_length=int(1e30))  # transformers' "not set"
    (copy / "config.json").unlink()
    assert Tokenizer.load(str(copy)).context_length == 8192


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        Tokenizer.load(str(tmp_path / "no-such-folder"))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(str(tmp_path))


def test_resolve_model_path(tmp_path, monkeypatch):
    assert resolve_model_path(None) == DEFAULT_MODEL_PATH
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    # org/name is looked up in the local Hugging Face cache only
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_path("org/tiny") == str(snapshot)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        resolve_model_path("org/absent")


# --- incremental detokenization ------------------------------------------------------------------


def _stream(detok, ids: list[int], rng: random.Random) -> str:
    out, i = [], 0
    while i < len(ids):
        step = rng.choice((1, 1, 1, 2, 3, 7))
        out.append(detok.push(ids[i:i + step]))
        i += step
    out.append(detok.flush())
    return "".join(out)


def test_byte_level_path_is_used_for_the_shipped_model(tok):
    assert isinstance(tok.detokenizer(), ByteLevelDetokenizer)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_detokenizer_equals_decode_on_random_ids(tok, skip_special_tokens):
    rng = random.Random(1234)
    for trial in range(300):
        low, high = ((1000, 1999), (0, tok.vocab_size - 1))[trial % 2]  # mock engine range; anything
        ids = [rng.randint(low, high) for _ in range(rng.randint(0, 60))]
        streamed = _stream(tok.detokenizer(skip_special_tokens), ids, rng)
        assert streamed == tok.decode(ids, skip_special_tokens=skip_special_tokens), ids


def test_incremental_detokenizer_on_multibyte_text(tok):
    rng = random.Random(7)
    text = "".join(make_tokenizer.MULTILINGUAL) + "\n".join(["日本語のテキスト🚀", "emoji 👍🏽 mixed ascii"])
    ids = tok.encode("<|im_start|>" + text + "<|im_end|>")
    for _ in range(20):
        assert _stream(tok.detokenizer(), ids, rng) == text
        assert _stream(WindowDetokenizer(tok._tok, True), ids, rng) == text  # the generic path too
    # a character split over tokens is held back, never emitted half
    detok = tok.detokenizer()
    pieces = [detok.push([i]) for i in tok.encode("🚀")]
    assert "".join(pieces) == "🚀" and "\ufffd" not in "".join(pieces)


def test_incremental_detokenizer_never_emits_a_partial_character(tok):
    rng = random.Random(3)
    text = "".join(make_tokenizer.MULTILINGUAL)
    ids = tok.encode(text)
    detok = tok.detokenizer()
    pieces, i = [], 0
    while i < len(ids):                  # random chunks, as tokens arrive from an engine
        n = rng.randint(1, 3)
        pieces.append(detok.push(ids[i:i + n]))
        assert "\ufffd" not in pieces[-1]
        i += n
    assert detok.flush() == ""
    assert "".join(pieces) == tok.decode(ids)


def test_window_detokenizer_for_a_sentencepiece_style_model(tmp_path):
    """A Metaspace (SentencePiece-style) folder loaded with --model-path uses the generic path,
    whose windows keep the leading-space rule of the decoder right."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    corpus = ["the quick brown fox jumps over the lazy dog", *make_tokenizer.MULTILINGUAL] * 5
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>"], show_progress=False))
    folder = tmp_path / "sp"
    folder.mkdir()
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "model_max_length": 512}))
    tok = Tokenizer.load(str(folder))
    assert isinstance(tok.detokenizer(), WindowDetokenizer)
    assert (tok.eos_token_id, tok.context_length) == (1, 512)
    rng = random.Random(5)
    for text in ["the lazy dog jumps", " leading space", *make_tokenizer.MULTILINGUAL]:
        ids = tok.encode(text) + [1]
        for _ in range(5):
            assert _stream(tok.detokenizer(), ids, rng) == tok.decode(ids)


# --- piecewise encoding (SegmentEncoder) ------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
         "<tool_response>", "</tool_response>"]
PIECES = st.one_of(st.sampled_from(ADDED), st.text(max_size=40),
                   st.sampled_from(["\n", " ", "  ", "<|im", "_end|>", "<tool", "é", "🙂", "\t\n"]))


SHIPPED_TOKENIZER = Tokenizer.load(None)


@settings(max_examples=2000, deadline=None)
@given(parts=st.lists(PIECES, max_size=12))
def test_piecewise_encoding_equals_whole_encoding(parts):
    tokenizer = SHIPPED_TOKENIZER
    assert tokenizer._segments is not None          # the shipped tokenizer qualifies
    text = "".join(parts)
    whole = tokenizer._tok.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text) == whole
    assert tokenizer.encode(text) == whole           # and again, from the cache


def test_piecewise_encoding_on_rendered_chats_and_its_cache():
    tokenizer = Tokenizer.load(None)
    system = {"role": "system", "content": "You are a careful agent. " * 50}
    for i in range(20):
        text = tokenizer.apply_chat_template(
            [system, {"role": "user", "content": f"task {i}: fix the bug in module_{i}.py"}],
            tools=[{"type": "function", "function": {"name": "bash", "parameters": {}}}])
        assert tokenizer.encode(text) == tokenizer._tok.encode(text, add_special_tokens=False).ids
    assert system["content"] in tokenizer._segments._cache or any(
        system["content"] in piece for piece in tokenizer._segments._cache)
