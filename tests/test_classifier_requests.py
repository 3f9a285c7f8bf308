"""Bad request bodies are refused naming the field (by the adapter, or the classifier for what only it cares about), never a crash or a guess."""

from __future__ import annotations

import pytest

from classifier import Classifier, InvalidRequestShape
from models.errors import InvalidRequest
from request_parsing import classify


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load()


BAD = [
    ("/v1/embeddings", {"input": "x"}, "endpoint", "unsupported endpoint"),
    ("/v1/chat/completions", ["not", "an", "object"], "body", "JSON object"),
    ("/v1/chat/completions", {}, "messages", "required"),
    ("/v1/chat/completions", {"messages": []}, "messages", "at least one message"),
    ("/api/chat", {"messages": "hello"}, "messages", "list of messages"),
    ("/api/chat", {"messages": ["hello"]}, "messages[0]", "must be an object"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "unknown role"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages[0].role", "unknown role"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "be nice"}]}, "messages", "no user message"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, "messages[0].content", "empty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "   \n"}]}, "messages[0].content", "empty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "string or a list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content", "must be an object"),
    ("/v1/completions", {}, "prompt", "required"),
    ("/v1/completions", {"prompt": {"text": "x"}}, "prompt", "must be a string"),
    ("/v1/completions", {"prompt": []}, "prompt", "empty list"),
    ("/v1/completions", {"prompt": [None]}, "prompt", "list of null"),
    ("/v1/completions", {"prompt": "x", "suffix": 3}, "suffix", "must be a string"),
    ("/completion", {"prompt": 12}, "prompt", "must be a string"),
    ("/api/generate", {"prompt": "x", "suffix": ["y"]}, "suffix", "must be a string"),
    ("/api/generate", {"prompt": "x", "system": 1}, "system", "must be a string"),
    ("/api/generate", {"prompt": "x", "context": "abc"}, "context", "token ids"),
    ("/infill", {}, "input_prefix", "required"),
    ("/infill", {"input_prefix": 1, "input_suffix": ""}, "input_prefix", "must be a string"),
    ("/infill", {"input_prefix": "", "input_suffix": "", "input_extra": "x"}, "input_extra", "list"),
    ("/infill", {"input_prefix": "", "input_suffix": "", "input_extra": [{"text": 5}]}, "input_extra[0].text", "string `text`"),
]


CLASSIFIER_SIDE = {"empty"}  # what only the classifier refuses; the rest is the adapters'


@pytest.mark.parametrize("endpoint,body,field,words", BAD, ids=[f"{e}:{f}:{w}" for e, _, f, w in BAD])
def test_bad_request_is_refused_naming_the_field(clf, endpoint, body, field, words):
    with pytest.raises((InvalidRequest, InvalidRequestShape)) as info:
        classify(clf, endpoint, body)
    if words in CLASSIFIER_SIDE:
        assert isinstance(info.value, InvalidRequestShape) and info.value.field == field and words in info.value.message
    else:  # one set of rules: the dialect adapter refuses it before the classifier sees it
        assert isinstance(info.value, InvalidRequest), info.value
        assert info.value.param == field


def test_invalid_request_shape_is_a_value_error():
    assert issubclass(InvalidRequestShape, ValueError)


def test_shape_only_validates_too():
    with pytest.raises(InvalidRequestShape):
        classify(Classifier.shape_only(), "/api/chat", {"messages": []})


def test_huge_prompt_is_classified_not_rejected(clf):
    huge = "Please summarise the following meeting notes.\n" + "The team discussed the quarterly roadmap. " * 30_000
    assert len(huge) > 1_000_000
    d = classify(clf, "/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]})
    assert d.label.value == "instruct"


def test_wrong_types_in_fields_the_classifier_does_not_read_are_the_adapters_to_refuse(clf):
    """One set of rules: a body the server would refuse is refused here too, naming the field."""
    with pytest.raises(InvalidRequest) as err:
        classify(clf, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi there"}], "temperature": "hot"})
    assert err.value.param == "temperature"
