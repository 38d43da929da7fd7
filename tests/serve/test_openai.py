"""The official `openai` Python client, unchanged, against `clipblip serve`'s /v1/embeddings: texts and images,
float and base64 (the client's default), usage, and errors surfaced as the client's own exceptions."""

import numpy as np
import pytest

from clipblip.engine import BlipEngine, ClipEngine

openai = pytest.importorskip("openai", reason="the official openai client (the `test` extra) is not installed")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed")

from tests.serve.test_server import Server, b64  # noqa: E402

KEY = "openai-client-key"


@pytest.fixture(scope="module")
def server(clip_with_attentions, blip_itm):
    running = Server([f"clip={clip_with_attentions.exported}", f"itm={blip_itm.exported}"], "--api-key", KEY)
    yield running
    code, err = running.stop()
    assert code == 0, err[-2000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def rows(answer) -> np.ndarray:
    assert [d.index for d in answer.data] == list(range(len(answer.data)))
    return np.array([d.embedding for d in answer.data], dtype=np.float32)


def test_texts_in_base64_and_float_as_the_engine_embeds_them(client, clip_with_attentions):
    engine = ClipEngine.from_dir(clip_with_attentions.exported)
    texts = ["a cat", "猫 🐱", ""]
    expected = engine.embed_texts(texts)
    by_default = client.embeddings.create(model="clip", input=texts)  # the client asks for base64
    np.testing.assert_array_equal(rows(by_default), expected)  # float32 both ways: bit for bit
    as_floats = client.embeddings.create(model="clip", input=texts, encoding_format="float", user="someone",
                                         dimensions=engine.embed_dim)
    np.testing.assert_allclose(rows(as_floats), expected, atol=1e-7)
    assert by_default.model == "clip" and by_default.object == "list"
    tokens = sum(len(ids) for ids in engine.tokenizer.ids(texts))
    assert by_default.usage.prompt_tokens == by_default.usage.total_tokens == tokens
    one = client.embeddings.create(model="clip", input="a cat")
    np.testing.assert_array_equal(rows(one), expected[:1])


def test_images_through_extra_body(client, server, photos, blip_itm):
    engine = BlipEngine.from_dir(blip_itm.exported)
    images = ["data:image/jpeg;base64," + b64(photos[0]), b64(photos[1])]
    answer = client.embeddings.create(model="itm", input=images, extra_body={"modality": "image"})
    np.testing.assert_allclose(rows(answer), engine.embed_images(photos), atol=1e-6)
    assert answer.usage.prompt_tokens == 0


@pytest.mark.parametrize("call, error, says", [
    (dict(model="nope", input=["a"]), "NotFoundError", "model 'nope' is not served"),
    (dict(model="clip", input=["a"], dimensions=7), "BadRequestError", "dimensions 7"),
    (dict(model="clip", input=[]), "UnprocessableEntityError", "input: give one item or more"),
    (dict(model="clip", input=["a"], extra_body={"colour": "red"}), "UnprocessableEntityError", "colour"),
    (dict(model="clip", input=["a"], encoding_format="int8"), "UnprocessableEntityError", "encoding_format"),
    (dict(model="clip", input=["%%%"], extra_body={"modality": "image"}), "BadRequestError", "input[0]: not base64"),
])
def test_errors_are_the_clients_exceptions(client, call, error, says):
    with pytest.raises(getattr(openai, error)) as caught:
        client.embeddings.create(**call)
    assert says in str(caught.value)


def test_a_wrong_key_is_the_clients_authentication_error(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        client.embeddings.create(model="clip", input=["a"])
