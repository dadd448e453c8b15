import pytest
from hypothesis import given, strategies as st

from lalm_interp.errors import SiteError
from lalm_interp.sites import Range, Star, expand, matches, one, parse

EXAMPLES = [
    "audio.conv2",
    "audio.layers.27.mlp",
    "audio.layers.*.attn",
    "proj",
    "text.layers.10.resid",
    "text.layers.5:15.mlp.down@in",
    "text.layers.-1.resid",
    "text.layers.:3.attn",
    "audio.layers.28.mlp.down@in",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_round_trip(text):
    s = parse(text)
    assert str(s) == text
    assert parse(str(s)) == s
    assert hash(s) == hash(parse(text))


def test_parsed_fields():
    s = parse("text.layers.5:15.mlp.down@in")
    assert s.stream == "text" and s.port == "in" and s.is_pattern
    assert s.path == ("layers", Range(5, 15), "mlp", "down")
    c = parse("audio.layers.27.mlp")
    assert c.layer == 27 and c.component == "mlp" and not c.is_pattern
    assert parse("audio.conv2").component == "conv2" and parse("audio.conv2").layer is None
    assert parse("text.layers.*.attn").path[1] == Star()
    assert str(c.with_layer(3)) == "audio.layers.3.mlp"
    with pytest.raises(Exception):
        c.stream = "text"  # frozen


seg = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
    st.integers(-40, 40).map(str),
    st.just("*"),
    st.tuples(st.one_of(st.none(), st.integers(-9, 40)), st.one_of(st.none(), st.integers(-9, 40))).map(
        lambda t: f"{'' if t[0] is None else t[0]}:{'' if t[1] is None else t[1]}"
    ),
)


@given(st.sampled_from(["audio", "proj", "text"]), st.lists(seg, max_size=5), st.sampled_from(["", "@in", "@out"]))
def test_round_trip_property(stream, segs, port):
    text = ".".join([stream, *segs]) + port
    s = parse(text)
    expected = text[: -len("@out")] if port == "@out" else text
    assert str(s) == expected
    assert parse(str(s)) == s


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("vision.layers.1.mlp", "unknown stream"),
        ("text..mlp", "empty segment"),
        ("text.layers.1.mlp@inout", "port"),
        ("text.layers.1-2.mlp", "segment"),
        ("", "empty segment"),
    ],
)
def test_parse_errors(bad, needle):
    with pytest.raises(SiteError) as e:
        parse(bad)
    assert needle in str(e.value)
    assert "docs/errors/sites.md" in str(e.value)


def test_expand_forward_order(qwen7b_meta):
    _, _, a = qwen7b_meta
    sites = expand("text.layers.5:15.mlp.down@in", a)
    assert [s.layer for s in sites] == list(range(5, 15))
    assert all(s.port == "in" and s.component == "mlp.down" for s in sites)
    mixed = expand(["text.layers.3.resid", "audio.conv2", "proj", "text.layers.3.attn", "audio.layers.0.mlp"], a)
    assert [str(s) for s in mixed] == [
        "audio.conv2",
        "audio.layers.0.mlp",
        "proj",
        "text.layers.3.attn",
        "text.layers.3.resid",
    ]
    assert [str(s) for s in expand("text.layers.-2:.resid", a)] == ["text.layers.30.resid", "text.layers.31.resid"]
    assert str(one("text.layers.-1.resid", a)) == "text.layers.31.resid"
    assert len(expand("audio.layers.*.attn", a)) == 32
    # inside a layer: input first, then attention, the MLP key, the MLP, the output
    order = expand(
        ["text.layers.0.resid", "text.layers.0.mlp", "text.layers.0.mlp.down@in", "text.layers.0.attn",
         "text.layers.0.resid@in", "text.layers.0.mlp.down"], a)
    assert [str(s) for s in order] == [
        "text.layers.0.resid@in",
        "text.layers.0.attn",
        "text.layers.0.mlp.down@in",
        "text.layers.0.mlp.down",
        "text.layers.0.mlp",
        "text.layers.0.resid",
    ]
    assert [str(s) for s in expand("text.layers.0.*", a)] == [
        "text.layers.0.attn", "text.layers.0.mlp", "text.layers.0.resid"]


def test_expand_errors_list_what_exists(qwen7b_meta):
    _, _, a = qwen7b_meta
    with pytest.raises(SiteError, match=r"layer 32 is out of range.*32 text layers \(0\.\.31"):
        expand("text.layers.32.mlp", a)
    with pytest.raises(SiteError, match=r"reaches past"):
        expand("audio.layers.5:40.mlp", a)
    with pytest.raises(SiteError) as e:
        expand("text.layers.3.ffn", a)
    assert "text.layers.N.mlp" in str(e.value) and "text.layers.N.attn" in str(e.value)
    with pytest.raises(SiteError, match="exactly one"):
        one("text.layers.*.mlp", a)
    with pytest.raises(SiteError, match="matches nothing"):
        expand("text.layers.3.attn@in", a)


@given(st.integers(-40, 40), st.integers(-40, 40))
def test_range_resolve_property(a, b):
    n = 32
    r = Range(a, b).resolve(n)
    expect = [i for i in range(n) if (a + n if a < 0 else a) <= i < (b + n if b < 0 else b)]
    assert list(r) == expect
    for i in range(n):
        assert matches(f"text.layers.{a}:{b}.mlp", f"text.layers.{i}.mlp", n) == (i in expect)
