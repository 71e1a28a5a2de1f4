from mcpfleet.registry.expand import expand

ENV = {"TOKEN": "s3cret", "EMPTY": ""}


def test_set_variable_is_substituted_and_recorded() -> None:
    result = expand("Bearer ${TOKEN}", ENV)
    assert (result.text, result.used, result.problems) == ("Bearer s3cret", ("TOKEN",), ())


def test_default_applies_when_unset_or_empty_but_not_when_set() -> None:
    assert expand("${MISSING:-fallback}", ENV).text == "fallback"
    assert expand("${EMPTY:-fallback}", ENV).text == "fallback"
    assert expand("${TOKEN:-fallback}", ENV).text == "s3cret"
    assert expand("${MISSING:-}", ENV).text == ""


def test_unset_variable_without_default_is_a_problem_naming_it() -> None:
    result = expand("x-${MISSING}-y", ENV)
    assert result.problems and "MISSING" in result.problems[0]


def test_empty_but_set_variable_without_default_is_kept_empty() -> None:
    assert expand("[${EMPTY}]", ENV).text == "[]"


def test_dollar_escapes_and_lone_dollars() -> None:
    assert expand("cost $$5 and $HOME stays", ENV).text == "cost $5 and $HOME stays"
    assert expand("$${TOKEN}", ENV).text == "${TOKEN}"


def test_malformed_references_are_reported() -> None:
    assert expand("${1BAD}", ENV).problems
    assert expand("${UNCLOSED", ENV).problems
