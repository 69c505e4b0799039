"""Chat with the installed SmolLM2 GGUF: the session keeps the conversation, streams what `infer.chat` returns,
stops at the end of the turn; `python -m infer chat` answers piped questions and exits at EOF.

(Token-level parity of the chat path with transformers is in test_gguf.py; the template in test_gguf_tokenizer.py.)
"""
import io

import pytest

import infer
from infer.cli.main import main
from infer.config import SamplingParams
from infer.generation.chat import ChatSession
from conftest import smollm2_group

NAME = "smollm2-135m-instruct"
SP = SamplingParams(temperature=0.0, max_new_tokens=24)


pytestmark = smollm2_group


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


def test_session_keeps_the_conversation_and_streams_what_chat_returns(model):
    cfg, params, tok = model
    session = ChatSession(params, cfg, tok, SP, system="You are a terse assistant.")
    first = "".join(session.send("What is the capital of France?"))
    assert first == session.last.text and first.strip()
    assert first == infer.chat(params, cfg, tok, session.messages[:2], SP)
    second = "".join(session.send("And of Italy?"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first and session.messages[4]["content"] == second
    # The second prompt holds the first answer, rendered by the template, and no BOS added by the tokenizer.
    assert session.last.prompt_ids == tok.chat_template.encode(tok, session.messages[:4])
    stops = tok.chat_template.end_of_turn_ids(tok)
    ids = session.last.token_ids
    assert ids[-1] in stops or len(ids) == SP.max_new_tokens
    assert not any(t in stops for t in ids[:-1])


def test_chat_without_a_template_is_refused(model):
    cfg, params, _ = model

    class NoTemplate:
        kind, path, eos_ids = "bytes", "nowhere", ()

    with pytest.raises(ValueError, match="no chat template"):
        infer.chat(params, cfg, NoTemplate(), [{"role": "user", "content": "hi"}], SP)


def test_cli_chat_answers_piped_questions(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 2?\n\nName a color.\n"))
    assert main(["chat", "--model", NAME, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "> What is 2 + 2?" and "> Name a color." in lines
    answers = out.split("> ")[1:]
    assert len(answers) == 2 and all(a.split("\n", 1)[1].strip() for a in answers)
